"""The quality report's statistics, as plain dataclasses: a series' summary over its seeds, the majority floor, and
paired-bootstrap differences over the saved per-example predictions (``peft_superpos.metrics.bootstrap``), per task
(so that a gap of one example on COPA's 100 does not count as a win) and pooled over the tasks."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from benchmarks.quality_grid import EVAL_STEPS, RunResult, RunSpec, load_result
from benchmarks.quality_predictions import parse_records, predictions_at, read_evaluations, version
from peft_superpos.data import get_task
from peft_superpos.harness.evaluation import best_constant_prediction, constant_prediction_floor
from peft_superpos.metrics.bootstrap import Verdict, bootstrap_scores, paired_difference

BOOTSTRAP_RESAMPLES = 1000  # paired resamples of the eval examples (seed 0), the same for every comparison


def ordered(values: Iterable) -> list:
    """The distinct values in order of first appearance."""
    return list(dict.fromkeys(values))


def mean_or_none(values: Iterable[float | None]) -> float | None:
    values = list(values)
    return float(np.mean(values)) if values and all(v is not None for v in values) else None


class ResultSet:
    """The finished runs of a grid in a results folder, looked up by series."""

    def __init__(self, grid: Sequence[RunSpec], results_dir: Path) -> None:
        self.grid = tuple(grid)
        self.results_dir = results_dir
        self.by_id = {spec.run_id: load_result(spec, results_dir) for spec in grid}
        self.found = [r for r in self.by_id.values() if r is not None]

    def stage(self, stage: str) -> list[RunSpec]:
        return [s for s in self.grid if s.stage == stage]

    def runs(
        self, model: str, task: str, series: str, stages: Sequence[str], seed: int | None = None
    ) -> list[RunResult]:
        """The finished runs of one series (all seeds, or ``seed``)."""
        return [
            r for r in self.found
            if (r.spec.model, r.spec.task, r.spec.series) == (model, task, series) and r.spec.stage in stages
            and (seed is None or r.spec.seed == seed)
        ]  # fmt: skip

    def summary(
        self, model: str, task: str, series: str, stages: Sequence[str], seed: int | None = None
    ) -> SeriesSummary | None:
        """:func:`series_summary` of the finished runs of one series (all seeds, or ``seed``)."""
        return series_summary(self.runs(model, task, series, stages, seed))


# ----------------------------------------------------------------------------------------------------------
# Summaries of a series, floors
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Curve:
    """The mean learning curve over seeds, with the lowest and highest seed's score at each step."""

    steps: list[int]
    scores: list[float]
    low: list[float]
    high: list[float]


@dataclass(frozen=True)
class SeriesSummary:
    """Means over the seeds of a series (a floor is one with only ``best``)."""

    seeds: list[int] = field(default_factory=list)
    best: float | None = None
    final: float | None = None
    steps_to_90: float | None = None
    invalid_at_best: float | None = None
    top_class_at_best: float | None = None
    early_train_loss: float | None = None
    first_eval: float | None = None
    seconds_per_step: float | None = None
    curve: Curve = field(default_factory=lambda: Curve([], [], [], []))


def series_summary(results: Sequence[RunResult]) -> SeriesSummary | None:
    """Mean over seeds of best, final, steps to 90 %, invalid rate at best, s/step; the mean curve with the lowest
    and highest seed's score at each step."""
    if not results:
        return None
    steps = sorted(set.intersection(*({int(r["step"]) for r in result.scored} for result in results)))
    curves = [{int(r["step"]): r["eval_score"] for r in result.scored} for result in results]
    return SeriesSummary(
        seeds=[r.spec.seed for r in results],
        best=mean_or_none(r.best for r in results),
        final=mean_or_none(r.last for r in results),
        steps_to_90=mean_or_none(r.steps_to_90 for r in results),
        invalid_at_best=mean_or_none(r.invalid_at_best for r in results),
        top_class_at_best=mean_or_none(r.top_class_at_best for r in results),
        early_train_loss=mean_or_none(r.early_train_loss for r in results),
        first_eval=mean_or_none(r.score_at(EVAL_STEPS) for r in results),
        seconds_per_step=mean_or_none(r.seconds_per_step for r in results),
        curve=Curve(
            steps=steps,
            scores=[float(np.mean([c[s] for c in curves])) for s in steps],
            low=[float(min(c[s] for c in curves)) for s in steps],
            high=[float(max(c[s] for c in curves)) for s in steps],
        ),
    )


@dataclass(frozen=True)
class Floor:
    """The majority-class floor and the zero-shot score of the base model on a task's eval examples."""

    majority: float | None
    zero_shot: float | None


def majority_floor(results: Iterable[RunResult]) -> float | None:
    """The best score of a constant prediction on the runs' eval examples: ``floors.majority`` of a final.json,
    else computed from the gold labels of a saved evaluation."""
    results = list(results)
    for result in results:
        floor = (result.final.get("floors") or {}).get("majority")
        if floor is not None:
            return float(floor)
    for result in results:
        for records in read_evaluations(result.folder).values():
            saved = parse_records(records, result.spec.task)
            if saved is not None:
                return constant_prediction_floor(get_task(result.spec.task), saved.golds)
    return None


# ----------------------------------------------------------------------------------------------------------
# Paired bootstrap over the saved per-example predictions
# ----------------------------------------------------------------------------------------------------------

#: A side of a comparison on one task: ((example ids, gold labels), its score on each resample).
Side = tuple[tuple[tuple[int, ...], tuple[int | float, ...]], np.ndarray]


@functools.cache
def resampled_evaluation(folder: Path, step: int, task: str, key: tuple) -> Side | None:
    """The examples of one saved evaluation and its score on each resample (cached per folder :func:`version`
    ``key``: the suite refreshes the report after every run, and only new evaluations cost time)."""
    saved = predictions_at(folder, step, task)
    if saved is None:
        return None
    return (saved.ids, saved.golds), bootstrap_scores(task, saved.preds, saved.golds, resamples=BOOTSTRAP_RESAMPLES)


def resampled_seeds(runs: Sequence[RunResult], step: int | None = None) -> tuple[tuple, np.ndarray] | None:
    """The runs' predictions at ``step`` (None: each run's best evaluation), scored on the resamples: the examples
    and the scores, shape (runs, resamples); None if a run has no such evaluation saved or the runs' examples
    differ."""
    sides = []
    for run in runs:
        at = step if step is not None else int(run.best_row["step"]) if run.best_row else None
        if at is None:
            return None
        sides.append(resampled_evaluation(run.folder, at, run.spec.task, version(run.folder)))
    if not sides or None in sides or len({examples for examples, _ in sides}) != 1:
        return None
    return sides[0][0], np.stack([scores for _, scores in sides])


def resampled_runs(runs: Sequence[RunResult], step: int | None = None) -> Side | None:
    """:func:`resampled_seeds` averaged over the runs (the seeds of a series): one side of a paired comparison."""
    seeds = resampled_seeds(runs, step)
    return None if seeds is None else (seeds[0], seeds[1].mean(axis=0))


def seeds_and_examples_interval(runs: Sequence[RunResult], step: int) -> tuple[float, float] | None:
    """The 95 % interval of the runs' mean score at ``step`` over resamples of the seeds and the eval examples
    (:func:`two_level_interval`); None where :func:`resampled_seeds` is."""
    seeds = resampled_seeds(runs, step)
    return None if seeds is None else two_level_interval(seeds[1])


def two_level_interval(scores: np.ndarray) -> tuple[float, float]:
    """The 95 % interval of the mean over runs of ``scores`` (shape (runs, resamples of the examples)), where each
    resample of the examples also draws as many runs with replacement (a two-level bootstrap; seed 0). With one
    run it is the interval over the examples alone."""
    runs, resamples = scores.shape
    draws = np.random.default_rng(0).integers(0, runs, size=(resamples, runs))
    means = scores[draws, np.arange(resamples)[:, None]].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


@functools.cache
def resampled_floor(task_name: str, golds: tuple[int | float, ...]) -> np.ndarray:
    """The score on each resample of the constant prediction that gives the majority floor."""
    constant = best_constant_prediction(get_task(task_name), golds)
    return bootstrap_scores(task_name, [constant] * len(golds), golds, resamples=BOOTSTRAP_RESAMPLES)


@dataclass(frozen=True)
class Difference:
    """A difference of two scores with its 95 % paired-bootstrap interval and verdict (``Verdict`` values)."""

    difference: float
    low: float
    high: float
    verdict: str


def paired(first: Side | None, second: Side | None, first_score: float | None,
           second_score: float | None) -> Difference | None:  # fmt: skip
    """The difference of two scores with its 95 % paired-bootstrap interval and verdict; None when a side has no
    predictions or the sides were evaluated on different examples."""
    if first is None or second is None or first[0] != second[0] or first_score is None or second_score is None:
        return None
    result = paired_difference(first[1], second[1], first_score - second_score)
    return Difference(result.difference, result.low, result.high, result.verdict.value)


def pooled(sides: Sequence[tuple[Side | None, Side | None, float | None, float | None]]) -> Difference | None:
    """The mean over tasks of the per-task differences (each ``(first side, second side, first score, second
    score)`` as for :func:`paired`) with its 95 % paired-bootstrap interval: on each resample, the mean over the tasks
    of each task's resampled difference. Each task's resamples are drawn with the same seed, so tasks with as many
    examples would share their draws; a fixed permutation of each task's resample order makes the draws independent
    across tasks. None unless every task is tested."""
    if not sides or any(paired(*task) is None for task in sides):
        return None
    point = float(np.mean([first_score - second_score for _, _, first_score, second_score in sides]))
    differences = [first[1] - second[1] for first, second, _, _ in sides]  # type: ignore[index]
    resampled = np.mean([d[np.random.default_rng(i).permutation(len(d))] for i, d in enumerate(differences)], axis=0)
    result = paired_difference(resampled, np.zeros_like(resampled), point)
    return Difference(result.difference, result.low, result.high, result.verdict.value)


@dataclass(frozen=True)
class Tested:
    """Per-task differences (None: untested) and their mean over the tasks (``pooled``, see :func:`pooled`); how many
    of the informative tasks are better / within noise / worse and untested, and the tasks that are not informative
    (both sides within noise of the majority floor, or below it)."""

    better: int
    within_noise: int
    worse: int
    untested: int
    not_informative: list[str]
    per_task: dict[str, Difference | None]
    pooled: Difference | None


def tested(
    sides: Mapping[str, tuple[Side | None, Side | None, float | None, float | None]],
    not_informative: Iterable[str] = (),
) -> Tested:
    """:func:`paired` on each task of ``sides`` and :func:`pooled` over them; the counts leave out
    ``not_informative`` tasks."""
    per_task = {t: paired(*task) for t, task in sides.items()}
    dull = [t for t in sides if t in set(not_informative)]
    verdicts = [d.verdict if d else None for t, d in per_task.items() if t not in dull]
    return Tested(verdicts.count(Verdict.BETTER), verdicts.count(Verdict.WITHIN_NOISE), verdicts.count(Verdict.WORSE),
                  verdicts.count(None), dull, per_task, pooled(list(sides.values())))  # fmt: skip


@dataclass(frozen=True)
class Comparison(Tested):
    """A head to head of two series over the tasks where both have a best score (see :func:`compare`)."""

    label: str
    tasks: list[str]
    first_eval: Tested | None
    first_best: float | None
    second_best: float | None
    first_steps_to_90: float | None
    second_steps_to_90: float | None
    first_early_train_loss: float | None
    second_early_train_loss: float | None


#: A comparison's evidence on each task: (first side, second side).
Sides = Mapping[str, tuple[Side | None, Side | None]]


def compare(
    label: str,
    first: Mapping[str, SeriesSummary | None],
    second: Mapping[str, SeriesSummary | None],
    sides: Sides,
    learned: Iterable[str],
    first_eval_sides: Sides | None = None,
    not_informative: Iterable[str] = (),
) -> Comparison:
    """Head to head over the tasks where both sides have a best score: on how many tasks ``first`` is better,
    within noise or worse and the mean difference over the tasks (:func:`tested` on the best scores with the
    ``sides`` of each task; under ``first_eval`` the same for the scores at the first evaluation, when given),
    the mean best of each, the mean early train loss of each (where both have it) and the mean steps to 90 % of
    each over the ``learned`` tasks (both sides above the majority floor: at the floor, 90 % of the best is reached
    by chance)."""
    empty = SeriesSummary()
    one = {t: s or empty for t, s in first.items()}
    two = {t: second.get(t) or empty for t in one}
    tasks = [t for t in one if one[t].best is not None and two[t].best is not None]

    def both(key: str, over: Sequence[str]) -> tuple[float | None, float | None]:
        """Mean of ``key`` on each side over the tasks of ``over`` where both sides have it."""
        common = [t for t in over if getattr(one[t], key) is not None and getattr(two[t], key) is not None]
        return mean_or_none(getattr(one[t], key) for t in common), mean_or_none(getattr(two[t], key) for t in common)

    def test(key: str, evidence: Sides) -> Tested:
        return tested({t: (*evidence[t], getattr(one[t], key), getattr(two[t], key)) for t in tasks}, not_informative)

    first_steps, second_steps = both("steps_to_90", [t for t in tasks if t in set(learned)])
    first_loss, second_loss = both("early_train_loss", tasks)
    return Comparison(
        **vars(test("best", sides)),
        label=label,
        tasks=tasks,
        first_eval=None if first_eval_sides is None else test("first_eval", first_eval_sides),
        first_best=mean_or_none(one[t].best for t in tasks),
        second_best=mean_or_none(two[t].best for t in tasks),
        first_steps_to_90=first_steps,
        second_steps_to_90=second_steps,
        first_early_train_loss=first_loss,
        second_early_train_loss=second_loss,
    )
