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
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Hashable, Sequence

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from ..data.tasks import Task, get_task

__all__ = ["compute_metrics", "fill_invalid"]


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
    preds = fill_invalid(task, predictions, references)
    refs = np.asarray(references, dtype=float if task.is_regression else int)

    results: dict[str, float] = {}
    for name in task.metrics:
        if name == "accuracy":
            value = 100.0 * accuracy_score(refs, preds)
        elif name in ("f1", "f1a"):
            value = 100.0 * f1_score(refs, preds, pos_label=1, average="binary", zero_division=0.0)
        elif name == "macro_f1":
            labels = sorted({int(x) for x in refs} | {int(x) for x in preds if x >= 0})
            value = 100.0 * f1_score(refs, preds, labels=labels, average="macro", zero_division=0.0)
        elif name == "mcc":
            value = 100.0 * matthews_corrcoef(refs, preds)
        elif name in ("pearson", "spearman"):
            value = _correlation(name, preds, refs)
        elif name == "em":
            assert groups is not None
            value = _exact_match(preds, refs, groups)
        else:  # pragma: no cover - registry and this function are kept in sync
            raise ValueError(f"unknown metric {name!r}")
        results[name] = float(value)
    results["score"] = float(np.mean([results[name] for name in task.metrics]))
    results["invalid_rate"] = 100.0 * invalid / len(references)
    return results
