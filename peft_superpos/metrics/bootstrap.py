"""Paired bootstrap over evaluation examples: is one set of predictions better than another on the same
examples, or is the difference within the noise of a small eval set?

Both sides are scored (:func:`~peft_superpos.metrics.scoring.compute_metrics`) on the same resamples of the
examples, drawn with replacement; the percentile interval of the per-resample score differences says whether
the difference holds up. On 100 COPA examples a 1-point gap is noise; on 300 SST-2 examples a 10-point gap is
not::

    from peft_superpos.metrics import paired_bootstrap

    result = paired_bootstrap("sst2", predictions_a, predictions_b, references)
    result.verdict          # Verdict.BETTER, WORSE or WITHIN_NOISE (for a against b; str: "better", ...)
    result.low, result.high  # 95 % interval of score(a) - score(b), in score points

MultiRC resamples whole questions (``groups``), so exact match keeps its meaning. The resamples depend only on
the examples (their number, or their groups), ``resamples`` and ``seed``: :func:`bootstrap_scores` of two
prediction sets on the same examples are paired, so they can be computed once and compared many times (and
averaged over seeds first, as the quality suite does).
"""

from __future__ import annotations

import enum
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np

from ..data.tasks import Task, get_task
from .scoring import compute_metrics, filled_arrays, metric_values

__all__ = ["PairedDifference", "Verdict", "bootstrap_scores", "paired_bootstrap"]

DEFAULT_RESAMPLES = 1000


class Verdict(str, enum.Enum):
    """What the interval of ``first - second`` says (a str enum: JSON and comparisons see the plain string)."""

    BETTER = "better"
    WITHIN_NOISE = "within noise"
    WORSE = "worse"


def resample_indices(
    num_examples: int, groups: Sequence[Hashable] | None, resamples: int, seed: int
) -> list[tuple[np.ndarray, list[int] | None]]:
    """``resamples`` draws with replacement: (example indices, group of each drawn example or None). With
    ``groups`` whole groups are drawn, numbered by draw so a group drawn twice counts twice."""
    rng = np.random.default_rng(seed)
    if groups is None:
        return [(row, None) for row in rng.integers(0, num_examples, size=(resamples, num_examples))]
    members: dict[Hashable, list[int]] = {}
    for index, group in enumerate(groups):
        members.setdefault(group, []).append(index)
    blocks = list(members.values())
    draws = []
    for picks in rng.integers(0, len(blocks), size=(resamples, len(blocks))):
        indices = np.concatenate([blocks[p] for p in picks])
        draw_groups = [draw for draw, p in enumerate(picks) for _ in blocks[p]]
        draws.append((indices, draw_groups))
    return draws


def bootstrap_scores(
    task: Task | str,
    predictions: Sequence[int | float | None],
    references: Sequence[int | float],
    groups: Sequence[Hashable] | None = None,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> np.ndarray:
    """The task score (0..100) of ``predictions`` on each resample of the examples: shape (resamples,).
    ``predictions`` are label ids (STS-B: floats) with ``None`` for invalid ones, as for ``compute_metrics``."""
    task = get_task(task)
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}")
    preds, refs, _ = filled_arrays(task, predictions, references, groups)
    scores = np.empty(resamples)
    for b, (indices, draw_groups) in enumerate(resample_indices(len(refs), groups, resamples, seed)):
        scores[b] = metric_values(task, preds[indices], refs[indices], draw_groups)["score"]
    return scores


@dataclass(frozen=True)
class PairedDifference:
    """``difference``: score of the first side minus the second on all examples; ``low`` / ``high``: the
    percentile interval of that difference over the paired resamples; ``verdict``: ``better`` / ``worse``
    when the interval lies above / below 0, else ``within noise``."""

    difference: float
    low: float
    high: float
    confidence: float

    @property
    def verdict(self) -> Verdict:
        return Verdict.BETTER if self.low > 0 else Verdict.WORSE if self.high < 0 else Verdict.WITHIN_NOISE


def paired_difference(
    first_scores: np.ndarray, second_scores: np.ndarray, difference: float, confidence: float = 0.95
) -> PairedDifference:
    """The interval of ``first - second`` from paired :func:`bootstrap_scores` (same examples, resamples, seed)."""
    if first_scores.shape != second_scores.shape:
        raise ValueError(f"unpaired bootstrap scores: shapes {first_scores.shape} and {second_scores.shape}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}")
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(first_scores - second_scores, [tail, 100 - tail])
    return PairedDifference(float(difference), float(low), float(high), confidence)


def paired_bootstrap(
    task: Task | str,
    first_predictions: Sequence[int | float | None],
    second_predictions: Sequence[int | float | None],
    references: Sequence[int | float],
    groups: Sequence[Hashable] | None = None,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    confidence: float = 0.95,
) -> PairedDifference:
    """Is ``first_predictions`` better than ``second_predictions`` on these examples (see the module doc)?"""
    difference = (
        compute_metrics(task, first_predictions, references, groups)["score"]
        - compute_metrics(task, second_predictions, references, groups)["score"]
    )
    first, second = (
        bootstrap_scores(task, p, references, groups, resamples, seed) for p in (first_predictions, second_predictions)
    )
    return paired_difference(first, second, difference, confidence)
