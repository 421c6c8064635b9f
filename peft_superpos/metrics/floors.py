"""Floors: the score a run must beat on its eval examples without learning anything (a constant prediction)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .scoring import compute_metrics

__all__ = ["best_constant_prediction", "constant_prediction_floor"]


def best_constant_prediction(
    task: Any, labels: Sequence[int | float], groups: Sequence[Any] | None = None
) -> int | float:
    """The label id whose prediction for every example scores best on these examples (the majority class, or
    the class that maximises the task's metric); STS-B: 2.5 (a constant has no correlation)."""
    if task.is_regression:
        return 2.5
    return max(
        range(len(task.choices)), key=lambda c: compute_metrics(task, [c] * len(labels), labels, groups)["score"]
    )


def constant_prediction_floor(task: Any, labels: Sequence[int | float], groups: Sequence[Any] | None = None) -> float:
    """The best score any constant prediction reaches on these examples (the majority-class floor; STS-B: 0)."""
    constant = best_constant_prediction(task, labels, groups)
    return compute_metrics(task, [constant] * len(labels), labels, groups)["score"]
