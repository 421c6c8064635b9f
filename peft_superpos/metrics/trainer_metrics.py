"""``compute_metrics`` for ``transformers.Trainer``: generated label tokens to the paper's task metrics."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Any

import numpy as np
from transformers import EvalPrediction

from ..data.tasks import Task, get_task
from .scoring import compute_metrics

__all__ = ["trainer_compute_metrics"]


def _decode(tokenizer: Any, token_ids: np.ndarray) -> list[str]:
    """Texts of ``(batch, length)`` token ids; negative ids (the ``-100`` padding of labels and of predictions
    gathered across batches) and special tokens are dropped."""
    return tokenizer.batch_decode([row[row >= 0].tolist() for row in token_ids], skip_special_tokens=True)


def trainer_compute_metrics(
    task: Task | str, tokenizer: Any, groups: Sequence[Hashable] | None = None
) -> Callable[[EvalPrediction], dict[str, float]]:
    """A ``Trainer(compute_metrics=...)`` that reports the task's metrics, ``score`` and ``invalid_rate`` (0..100).

    ``EvalPrediction.predictions`` must be generated label tokens ``(batch, length)`` (e.g. ``Seq2SeqTrainer`` with
    ``predict_with_generate=True``; for a decoder-only model, the tokens after the prompt), ``label_ids`` the label
    tokens ``(batch, length)`` with ``-100`` where ignored. Both are decoded and parsed with
    ``task.parse_prediction``: a generation that is no label word is invalid and counts as wrong; the gold labels
    must parse (STS-B: the target text, i.e. the score rounded to 0.2). ``groups`` (MultiRC only, required there):
    the question id of every evaluation example, in order, e.g. the dataset's ``group`` column.
    """
    task = get_task(task)
    if task.is_grouped and groups is None:
        raise ValueError(
            f"{task.display_name} needs groups: pass the question id of every evaluation example (its 'group' column)"
        )

    def compute(eval_prediction: EvalPrediction) -> dict[str, float]:
        predictions = eval_prediction.predictions
        if isinstance(predictions, tuple):
            predictions = predictions[0]
        predictions, label_ids = np.asarray(predictions), np.asarray(eval_prediction.label_ids)
        if predictions.ndim != 2 or not np.issubdtype(predictions.dtype, np.integer):
            raise ValueError(
                f"expected generated token ids (batch, length), got {predictions.dtype} of shape {predictions.shape}; "
                "use Seq2SeqTrainer with predict_with_generate=True, or a preprocess_logits_for_metrics that returns "
                "token ids"
            )
        references = []
        for index, text in enumerate(_decode(tokenizer, label_ids)):
            reference = task.parse_prediction(text)
            if reference is None:
                raise ValueError(
                    f"the labels of example {index} decode to {text!r}, which is no {task.display_name} label"
                )
            references.append(reference)
        parsed = [task.parse_prediction(text) for text in _decode(tokenizer, predictions)]
        return compute_metrics(task, parsed, references, groups)

    return compute
