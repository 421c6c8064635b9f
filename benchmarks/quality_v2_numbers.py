"""Grid v2's numbers (issue 19), as plain dataclasses built from the results folder alone
(:func:`quality_v2_numbers`); ``quality_v2_render.py`` turns them into Markdown and JSON, ``quality_figures.py``
into the score-against-step figure.

The reported score of a run is its **last** evaluation, at the step budget: the best of its evaluations would be
chosen on the very examples it reports. The best is shown beside it. Settings (learning rate, SuperPos init) were
chosen on the development split (``quality_grid_v2.resolve_settings``), never on the validation examples.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks import quality_stats as stats
from benchmarks.first_steps import FirstSteps, PromptSetting
from benchmarks.quality_grid import (
    BATCH_SIZE,
    CONFIRM,
    EXTEND,
    MATCHED,
    REGIME,
    RESEED,
    SWEEP,
    V2_STAGES,
    ZERO_SHOT,
    LrCheckError,
    RunResult,
    RunSpec,
)
from benchmarks.quality_grid_v2 import SWEEPS, best_lr, better_init, sweep_scores
from benchmarks.quality_stats import Difference, Floor, ResultSet, Side, Tested
from peft_superpos.metrics.bootstrap import Verdict

#: The learning rate at which the report gives each setting's measured first step per unit lr (SuperPos' and a
#: prompt table's step is linear in lr there; Residual's, through its MLP, is not).
STEP_REFERENCE_LR = 1e-3
#: An evaluation where one label takes at least this share (%) of the predictions has collapsed to a class.
COLLAPSE_SHARE = 90.0


@dataclass(frozen=True)
class MethodRow:
    """One series (a method at its settings, every seed) on the validation examples. ``final``: the mean over
    seeds of the last evaluation, with a 95 % interval over the seeds and the eval examples
    (``seeds_and_examples_interval``);
    ``invalid``: the mean invalid-label rate (%) over every evaluation of every seed; ``collapsed``: the share (%)
    of those evaluations where one label took at least :data:`COLLAPSE_SHARE` % of the predictions;
    ``relative_step``: the effective step relative to the embedding RMS (``final.json["step_size"]``: for SuperPos
    the path through ΔE only); ``first_step``: the whole first step, measured (``first_steps``), likewise relative."""

    label: str
    lr: float | None
    relative_step: float | None
    first_step: float | None
    seeds: list[int]
    final: float | None
    final_low: float | None
    final_high: float | None
    final_by_seed: list[float | None]
    best: float | None
    steps_to_90: float | None
    invalid: float | None
    collapsed: float | None


@dataclass(frozen=True)
class SweepPoint:
    """One learning rate of a Stage A sweep, scored on the development split."""

    lr: float
    relative_step: float | None
    first_step: float | None
    best: float | None
    final: float | None
    top_class_at_best: float | None


@dataclass(frozen=True)
class DevSeed:
    """A setting at its chosen learning rate on the development split at one seed (the first: its sweep run)."""

    seed: int
    best: float | None
    final: float | None


@dataclass(frozen=True)
class Setting:
    """One method (SuperPos: and its init) of Stage A on one model: its sweep on the development split, the
    learning rate chosen there (None while the sweep runs) and whether it lies at an edge of the learning rates
    that ran, the chosen one on the development split at every seed (``dev_seeds``: SuperPos only, empty before
    its second seed is planned), and at every seed on the validation examples (None before any finished)."""

    label: str
    method: str
    sweep: list[SweepPoint]
    chosen_lr: float | None
    at_edge: bool
    confirm: MethodRow | None
    dev_seeds: list[DevSeed]

    def dev_mean(self, score: str) -> float | None:
        """The mean of ``score`` (``best`` or ``final``) over ``dev_seeds``; None until every seed finished."""
        return stats.mean_or_none(getattr(seed, score) for seed in self.dev_seeds)


@dataclass(frozen=True)
class StageA:
    model: str
    settings: list[Setting]
    dev_majority: float | None  # the majority floor of the development split
    floor: Floor  # on the validation examples
    versus: list[tuple[str, Difference | None]]  # "a vs b" on the final score, paired over the examples

    @property
    def stepped(self) -> bool:
        """Whether the whole first step of a finished sweep run is measured (so there is a point to plot)."""
        return any(p.first_step is not None for s in self.settings for p in s.sweep)


@dataclass(frozen=True)
class RegimeTask:
    """One task of Stage B: every method at the same step budget, and the floors on the same examples."""

    task: str
    train_examples: int | None
    epochs: float | None
    floor: Floor
    rows: list[MethodRow]
    not_informative: bool  # every method within noise of the majority floor, or below it


@dataclass(frozen=True)
class StageB:
    model: str
    tasks: list[RegimeTask]
    versus: list[tuple[str, Tested]]  # SuperPos against each other method, per task and pooled over the tasks


@dataclass(frozen=True)
class StageC:
    """SuperPos' m and softmax variants at the effective step of its tuned setting, beside that setting's own
    confirmations (``reference``, m=128), each variant against it on the final score."""

    model: str
    reference: MethodRow | None
    rows: list[MethodRow]
    versus: list[tuple[str, Difference | None]]


@dataclass(frozen=True)
class StepPerLr:
    """One prompt setting's measured first step on one model per unit of learning rate, relative to the embedding
    RMS, at :data:`STEP_REFERENCE_LR`: the whole step, and SuperPos' paths through ΔE and through p'."""

    model: str
    label: str
    whole: float
    through_delta: float | None
    through_weights: float | None


@dataclass(frozen=True)
class QualityV2Numbers:
    grid: tuple[RunSpec, ...]
    finished_by_stage: dict[str, tuple[int, int]]  # stage -> (finished, planned)
    steps_per_lr: list[StepPerLr]
    stage_a: list[StageA]
    stage_b: list[StageB]
    stage_c: list[StageC]


def quality_v2_numbers(grid: Sequence[RunSpec], results_dir: Path) -> QualityV2Numbers:
    """Every number of grid v2's report, from the results folder alone."""
    results = ResultSet(grid, results_dir)
    steps = FirstSteps.load(results_dir)
    stages = (ZERO_SHOT, *V2_STAGES)
    by_stage = {stage: (sum(results.by_id[s.run_id] is not None for s in specs), len(specs))
                for stage in stages if (specs := results.stage(stage))}  # fmt: skip
    return QualityV2Numbers(
        grid=results.grid,
        finished_by_stage=by_stage,
        steps_per_lr=steps_per_lr(steps),
        stage_a=[stage_a(results, steps, model) for model in stats.ordered(s.model for s in results.stage(SWEEP))],
        stage_b=[stage_b(results, steps, model) for model in stats.ordered(s.model for s in results.stage(REGIME))],
        stage_c=[stage_c(results, steps, model) for model in stats.ordered(s.model for s in results.stage(MATCHED))],
    )


def steps_per_lr(steps: FirstSteps) -> list[StepPerLr]:
    """:class:`StepPerLr` of every measured setting (none while ``prompt_steps`` has not run)."""

    def per_lr(value: float | None) -> float | None:
        return None if value is None else value / STEP_REFERENCE_LR

    rows = [row for row in steps.rows if math.isclose(row["lr"], STEP_REFERENCE_LR)]
    return [StepPerLr(row["model"], PromptSetting.of_row(row).label, per_lr(row["all"]), per_lr(row.get("delta")),
                      per_lr(row.get("weights"))) for row in rows]  # fmt: skip


def relative_step(runs: Sequence[RunResult]) -> float | None:
    """The mean over ``runs`` of the effective step relative to the embedding RMS, as each run recorded it."""
    return stats.mean_or_none((run.final.get("step_size") or {}).get("relative") for run in runs)


def last_step(runs: Sequence[RunResult]) -> int | None:
    """The step of the first run's last evaluation (every run of a series has the same budget)."""
    return int(runs[0].scored[-1]["step"]) if runs and runs[0].scored else None


def final_side(runs: Sequence[RunResult]) -> Side | None:
    """The runs' last evaluation on each bootstrap resample of the eval examples, averaged over the seeds."""
    step = last_step(runs)
    return None if step is None else stats.resampled_runs(runs, step)


def method_row(label: str, runs: Sequence[RunResult], steps: FirstSteps) -> MethodRow | None:
    """:class:`MethodRow` of the finished runs of one series (None: none finished)."""
    if not runs:
        return None
    step = last_step(runs)
    low, high = (None if step is None else stats.seeds_and_examples_interval(runs, step)) or (None, None)
    evaluations = [row for run in runs for row in run.scored]
    shares = [row.get("eval_majority_pred_share") for row in evaluations]
    return MethodRow(
        label=label,
        lr=(runs[0].final.get("hyperparameters") or {}).get("lr"),
        relative_step=relative_step(runs),
        first_step=steps.of_runs(runs),
        seeds=[run.spec.seed for run in runs],
        final=stats.mean_or_none(run.last for run in runs),
        final_low=low,
        final_high=high,
        final_by_seed=[run.last for run in runs],
        best=stats.mean_or_none(run.best for run in runs),
        steps_to_90=stats.mean_or_none(run.steps_to_90 for run in runs),
        invalid=stats.mean_or_none(row.get("eval_invalid_rate") for row in evaluations),
        collapsed=None if None in shares else 100.0 * float(np.mean([s >= COLLAPSE_SHARE for s in shares])),
    )


def stage_a(results: ResultSet, steps: FirstSteps, model: str) -> StageA:
    """Every setting of Stage A on ``model``: its sweep (development split), the learning rate chosen there, and
    the confirmations (validation); each SuperPos init (the better one first) against every other setting on the
    final score."""
    settings, sides, confirms = [], {}, {}
    sweep_specs = [s for s in (*results.stage(SWEEP), *results.stage(EXTEND)) if s.model == model]
    for method, init in SWEEPS:
        label = PromptSetting(method, init).label
        specs = [s for s in sweep_specs if (s.method, s.weight_init) == (method, init)]
        points = []
        for spec in sorted(specs, key=lambda s: s.lr):
            run = results.by_id[spec.run_id]
            if run is not None:
                points.append(SweepPoint(spec.lr, relative_step([run]), steps.of_runs([run]), run.best, run.last,
                                         run.top_class_at_best))  # fmt: skip
        try:
            chosen: float | None = best_lr(sweep_scores(specs[0], init, results.grid, results.results_dir))
        except LrCheckError:
            chosen = None
        ran = [p.lr for p in points]
        runs = [r for r in results.found if r.spec.stage == CONFIRM and r.spec.model == model
                and (r.spec.method, r.spec.weight_init) == (method, init)]  # fmt: skip
        confirms[label], sides[label] = method_row(label, runs, steps), final_side(runs)
        settings.append(Setting(label, method, points, chosen, chosen is not None and chosen in (min(ran), max(ran)),
                                confirms[label], dev_seeds(results, specs, chosen)))  # fmt: skip
    better = better_superpos(settings)
    superpos = [better, *(s.label for s in settings if s.method == "superpos" and s.label != better)]
    versus = [
        (f"{one} vs {other}", stats.paired(sides[one], sides[other], score(confirms[one]), score(confirms[other])))
        for one, other in superpos_pairs(superpos, list(confirms))
    ]
    dev_runs = [r for r in results.found if r.spec.model == model and r.spec.stage in (SWEEP, EXTEND)]
    return StageA(model, settings, stats.majority_floor(dev_runs), floor(results, model, "sst2", (CONFIRM,)), versus)


def dev_seeds(results: ResultSet, sweep_specs: Sequence[RunSpec], chosen: float | None) -> list[DevSeed]:
    """The chosen learning rate of the sweep ``sweep_specs`` on the development split at every seed: its sweep run,
    then its ``reseed`` runs (none where the setting has none, or nothing is chosen yet)."""
    first = next((s for s in sweep_specs if s.lr == chosen), None)
    if first is None:
        return []
    setting = (first.model, first.method, first.weight_init)
    reseeds = [s for s in results.stage(RESEED) if (s.model, s.method, s.weight_init) == setting]
    if not reseeds:
        return []
    runs = [(spec.seed, results.by_id[spec.run_id]) for spec in (first, *reseeds)]
    return [DevSeed(seed, run.best, run.last) if run else DevSeed(seed, None, None) for seed, run in runs]


def superpos_pairs(superpos: Sequence[str], labels: Sequence[str]) -> list[tuple[str, str]]:
    """Each SuperPos setting of ``superpos`` (in that order) against every other of ``labels``, each pair once."""
    return [(one, other) for i, one in enumerate(superpos) for other in labels if other not in superpos[: i + 1]]


def better_superpos(settings: Sequence[Setting]) -> str:
    """The SuperPos setting whose sweep reached the higher development score so far (``better_init``)."""
    superpos = {s.label: max((p.best for p in s.sweep if p.best is not None), default=-1.0) for s in settings
                if s.method == "superpos"}  # fmt: skip
    return better_init(superpos)


def score(row: MethodRow | None) -> float | None:
    return row.final if row else None


def floor(results: ResultSet, model: str, task: str, stages: Sequence[str]) -> Floor:
    """The majority floor and the zero-shot score on the validation examples (``stages``' runs and the zero-shot
    run are scored on all of them)."""
    same = [r for r in results.found if (r.spec.model, r.spec.task) == (model, task)]
    zero_shot = [r for r in same if r.spec.stage == ZERO_SHOT]
    majority = stats.majority_floor([*zero_shot, *(r for r in same if r.spec.stage in stages)])
    return Floor(majority, zero_shot[0].last if zero_shot else None)


def stage_b(results: ResultSet, steps: FirstSteps, model: str) -> StageB:
    """Every task of Stage B on ``model``: each setting's row, the floors, whether the task says anything, and
    each SuperPos init against every other setting on the final score (per task and pooled over the tasks)."""
    specs = [s for s in results.stage(REGIME) if s.model == model]
    methods = stats.ordered(s.series for s in specs)
    tasks, evidence = [], {}
    for task in stats.ordered(s.task for s in specs):
        task_specs = [s for s in specs if s.task == task]
        runs = {m: [r for r in results.found if r.spec in task_specs and r.spec.series == m] for m in methods}
        rows = {m: method_row(m, runs[m], steps) for m in methods}
        sides = {m: final_side(runs[m]) for m in methods}
        task_floor = floor(results, model, task, (REGIME,))
        examples = next((side[0] for side in sides.values() if side is not None), None)
        floor_side = None if examples is None else (examples, stats.resampled_floor(task, examples[1]))
        above = [stats.paired(sides[m], floor_side, score(rows[m]), task_floor.majority) for m in methods]
        dull = all(d is not None and d.verdict != Verdict.BETTER for d in above)
        finished = [run for series in runs.values() for run in series]
        train = task_specs[0].max_train_samples or (finished[0].final["data"]["train_examples"] if finished else None)
        epochs = task_specs[0].max_steps * BATCH_SIZE / train if train else None
        tasks.append(RegimeTask(task, train, epochs, task_floor, [r for r in rows.values() if r], dull))
        evidence[task] = (sides, rows)
    versus = []
    dull = [t.task for t in tasks if t.not_informative]
    for one, other in superpos_pairs(stats.ordered(s.series for s in specs if s.method == "superpos"), methods):
        sides_by_task = {t: (e[0][one], e[0][other], score(e[1][one]), score(e[1][other])) for t, e in evidence.items()}
        versus.append((f"{one} vs {other}", stats.tested(sides_by_task, dull)))
    return StageB(model, tasks, versus)


def stage_c(results: ResultSet, steps: FirstSteps, model: str) -> StageC:
    """Stage C on ``model``: each variant's row and its difference from the tuned setting's confirmations (the
    SuperPos init the variants train with, m=128) at the variant's seeds."""
    runs = [r for r in results.found if r.spec.stage == MATCHED and r.spec.model == model]
    variants = stats.ordered(s.series for s in results.stage(MATCHED) if s.model == model)
    inits = {(r.final.get("config") or {}).get("method_settings", {}).get("weight_init") for r in runs}
    reference_runs = [r for r in results.found if r.spec.stage == CONFIRM and r.spec.model == model
                      and r.spec.method == "superpos" and r.spec.weight_init in inits]  # fmt: skip
    reference = method_row(f"superpos m=128 ({', '.join(sorted(inits))}, tuned)", reference_runs, steps)
    rows, versus = [], []
    for series in variants:
        series_runs = [r for r in runs if r.spec.series == series]
        row = method_row(series, series_runs, steps)
        if row is not None:
            rows.append(row)
            seeds = {r.spec.seed for r in series_runs}
            paired_runs = [r for r in reference_runs if r.spec.seed in seeds]
            paired_score = stats.mean_or_none(r.last for r in paired_runs)
            difference = stats.paired(final_side(series_runs), final_side(paired_runs), row.final, paired_score)
            versus.append((f"{series} vs m=128", difference))
    return StageC(model, reference, rows, versus)
