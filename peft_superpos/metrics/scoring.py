"""Task metrics as reported in the SuperPos-Prompt paper, as percentages (0..100): the one implementation, used
by the harness (``peft_superpos.metrics.compute_metrics``), the ``evaluate`` module ``superpos_glue`` and
``trainer_compute_metrics``.

* QQP, MRPC: ``f1`` (positive class 1) and ``accuracy``; CB: ``macro_f1`` and ``accuracy``;
  CoLA: ``mcc``; STS-B: ``pearson`` and ``spearman``; MultiRC: ``f1a`` (binary F1 over all answer
  options) and ``em`` (a question counts only if all its answers are right); others: ``accuracy``.
* ``score`` is the mean of the task's metrics; ``invalid_rate`` is the percentage of ``None``
  predictions.

An invalid prediction (``None``) always counts as wrong:

* binary tasks (accuracy, F1, MCC, MultiRC F1a/EM): it is replaced by the opposite of the gold
  label, so it is a false negative (gold 1) or a false positive (gold 0);
* 3-class tasks (MNLI, CB): it is replaced by ``-1``, a class that is never gold, so it is wrong for
  accuracy and a false negative of the gold class for macro-F1 (averaged over the real classes
  that occur in the references or the valid predictions, like scikit-learn's default);
* STS-B: it is replaced by the end of [0, 5] farthest from the gold score (0.0 if gold >= 2.5,
  else 5.0). A correlation that is undefined (constant predictions) is reported as 0.

Accuracy, F1 and MCC are computed from counts with numpy, as scikit-learn defines them (the tests check them
against it): a paired bootstrap scores a thousand resamples of every run, where scikit-learn's per-call input
checks cost more than the metric.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Hashable, Sequence

import numpy as np
from scipy.stats import pearsonr, spearmanr

from ..data.tasks import Task, get_task

__all__ = ["compute_metrics", "fill_invalid", "filled_arrays", "metric_values"]


def fill_invalid(
    task: Task, predictions: Sequence[int | float | None], references: Sequence[int | float]
) -> np.ndarray:
    """Replace ``None`` predictions by a value that is scored as wrong (see module docstring)."""
    if task.is_regression:
        return np.array(
            [
                float(p) if p is not None else (0.0 if float(r) >= 2.5 else 5.0)
                for p, r in zip(predictions, references, strict=True)
            ],
            dtype=float,
        )
    binary = len(task.choices) == 2
    return np.array(
        [
            int(p) if p is not None else (1 - int(r) if binary else -1)
            for p, r in zip(predictions, references, strict=True)
        ],
        dtype=int,
    )


def filled_arrays(
    task: Task,
    predictions: Sequence[int | float | None],
    references: Sequence[int | float],
    groups: Sequence[Hashable] | None = None,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Check the inputs and return ``(predictions, references, invalid count)``: two arrays of shape (N,),
    the predictions with every ``None`` filled by :func:`fill_invalid`."""
    predictions = list(predictions)
    references = list(references)
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    if not references:
        raise ValueError("no predictions to score")
    if task.is_grouped and (groups is None or len(groups) != len(references)):
        raise ValueError(f"{task.display_name} needs one group (question id) per prediction for exact match")
    if not task.is_regression:
        num_labels = len(task.choices)
        bad = [x for x in (*predictions, *references) if x is not None and x not in range(num_labels)]
        if bad:
            raise ValueError(f"label ids for {task.display_name} must be in 0..{num_labels - 1}, got {bad[0]!r}")
    invalid = sum(p is None for p in predictions)
    refs = np.asarray(references, dtype=float if task.is_regression else int)
    return fill_invalid(task, predictions, references), refs, invalid


def _f1(preds: np.ndarray, refs: np.ndarray, label: int) -> float:
    """F1 of ``label`` against the rest, 0 when it is neither predicted nor gold."""
    true_positives = np.count_nonzero((preds == label) & (refs == label))
    wrong = np.count_nonzero((preds == label) != (refs == label))  # false positives + false negatives
    return 2 * true_positives / (2 * true_positives + wrong) if true_positives or wrong else 0.0


def _macro_f1(preds: np.ndarray, refs: np.ndarray) -> float:
    """Mean F1 over the classes that occur in the references or the valid (>= 0) predictions."""
    labels = np.union1d(refs, preds[preds >= 0])
    return float(np.mean([_f1(preds, refs, int(label)) for label in labels]))


def _mcc(preds: np.ndarray, refs: np.ndarray) -> float:
    """Matthews correlation (multiclass form, as scikit-learn), 0 when it is undefined."""
    classes, codes = np.unique(np.concatenate([refs, preds]), return_inverse=True)
    k, n = len(classes), len(refs)
    confusion = np.bincount(codes[:n] * k + codes[n:], minlength=k * k).reshape(k, k).astype(float)
    gold, predicted = confusion.sum(axis=1), confusion.sum(axis=0)
    covariance = np.trace(confusion) * n - gold @ predicted
    variance = (n * n - gold @ gold) * (n * n - predicted @ predicted)
    return float(covariance / math.sqrt(variance)) if variance else 0.0


def _correlation(kind: str, preds: np.ndarray, refs: np.ndarray) -> float:
    if len(refs) < 2:
        return 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constant input: the correlation is undefined (nan)
        value = float((pearsonr if kind == "pearson" else spearmanr)(preds, refs)[0])
    return 0.0 if math.isnan(value) else 100.0 * value


def _exact_match(preds: np.ndarray, refs: np.ndarray, groups: Sequence[Hashable]) -> float:
    all_right: dict[Hashable, bool] = {}
    for pred, ref, group in zip(preds, refs, groups, strict=True):
        all_right[group] = all_right.get(group, True) and bool(pred == ref)
    return 100.0 * sum(all_right.values()) / len(all_right)


def metric_values(
    task: Task, preds: np.ndarray, refs: np.ndarray, groups: Sequence[Hashable] | None = None
) -> dict[str, float]:
    """The task's metrics and ``score`` (their mean), 0..100, of :func:`filled_arrays`' output (N,)."""
    results: dict[str, float] = {}
    for name in task.metrics:
        if name == "accuracy":
            value = 100.0 * np.count_nonzero(preds == refs) / len(refs)
        elif name in ("f1", "f1a"):
            value = 100.0 * _f1(preds, refs, 1)
        elif name == "macro_f1":
            value = 100.0 * _macro_f1(preds, refs)
        elif name == "mcc":
            value = 100.0 * _mcc(preds, refs)
        elif name in ("pearson", "spearman"):
            value = _correlation(name, preds, refs)
        elif name == "em":
            assert groups is not None
            value = _exact_match(preds, refs, groups)
        else:  # pragma: no cover - registry and this function are kept in sync
            raise ValueError(f"unknown metric {name!r}")
        results[name] = float(value)
    results["score"] = float(np.mean([results[name] for name in task.metrics]))
    return results


def compute_metrics(
    task: Task | str,
    predictions: Sequence[int | float | None],
    references: Sequence[int | float],
    groups: Sequence[Hashable] | None = None,
) -> dict[str, float]:
    """Compute the task's metrics, ``score`` (their mean) and ``invalid_rate``, all in 0..100.

    ``predictions`` are label ids (floats for STS-B) with ``None`` for invalid generations;
    ``groups`` (MultiRC only, required there) are the question ids used for exact match.
    """
    task = get_task(task)
    preds, refs, invalid = filled_arrays(task, predictions, references, groups)
    return {**metric_values(task, preds, refs, groups), "invalid_rate": 100.0 * invalid / len(refs)}
