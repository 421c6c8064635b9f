"""Task metrics of the harness. The implementation (and the scoring of invalid predictions) lives in
``peft_superpos.metrics.scoring``, shared with the ``evaluate`` module ``superpos_glue``, so the harness and a
user's ``evaluate.load(peft_superpos.metrics.METRIC_PATH, task)`` compute the same numbers.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np

# ``from package import module``: also works while ``peft_superpos.metrics`` is still being imported (it imports
# the task registry, whose package imports this module).
from ..metrics import scoring
from .tasks import Task

__all__ = ["compute_metrics", "fill_invalid"]


def fill_invalid(
    task: Task, predictions: Sequence[int | float | None], references: Sequence[int | float]
) -> np.ndarray:
    """Replace ``None`` predictions by a value that is scored as wrong (see ``peft_superpos.metrics.scoring``)."""
    return scoring.fill_invalid(task, predictions, references)


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
    return scoring.compute_metrics(task, predictions, references, groups)
