"""Every number of the quality report, section by section, as plain dataclasses built from the results folder alone
(:func:`quality_numbers`); ``quality_render.py`` turns them into Markdown and JSON, ``quality_figures.py`` into
learning curves."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from benchmarks.first_steps import FirstSteps
from benchmarks.quality_grid import (
    ABLATION,
    EVAL_STEPS,
    LR_CHECK,
    MAIN,
    MINILM,
    SEED,
    STAGES,
    ZERO_SHOT,
    LrCheckError,
    RunSpec,
    failure_counts,
    lr_from_check,
)
from benchmarks.quality_stats import (
    Comparison,
    Difference,
    Floor,
    ResultSet,
    SeriesSummary,
    Side,
    compare,
    majority_floor,
    mean_or_none,
    ordered,
    paired,
    resampled_floor,
    resampled_runs,
    series_summary,
)
from peft_superpos import SuperPosPromptConfig
from peft_superpos.metrics.bootstrap import Verdict

#: The per-method averages of the main comparison.
SUMMARY_KEYS = (
    "best",
    "final",
    "steps_to_90",
    "invalid_at_best",
    "top_class_at_best",
    "early_train_loss",
    "seconds_per_step",
)
ENVIRONMENT_KEYS = ("device", "torch_threads", "torch", "transformers", "peft")

#: task -> series -> summary (None: no finished run).
Summaries = dict[str, dict[str, SeriesSummary | None]]


@dataclass(frozen=True)
class MainComparison:
    """One model's main stage (seeds of the second-seed stage merged): per task and method, and averages."""

    tasks: list[str]
    methods: list[str]
    summaries: Summaries
    average: dict[str, dict[str, float | None]]  # method -> SUMMARY_KEYS -> mean over the tasks
    floor_average: dict[str, float | None]  # "majority" / "zero_shot" -> mean over the tasks


@dataclass(frozen=True)
class SeedEntry:
    """One series at every seed: its best, and each extra seed against the main seed."""

    best: dict[int, float | None]
    versus_main_seed: dict[int, Difference | None]


@dataclass(frozen=True)
class PerCase:
    """A comparison over cases (tasks, or task and seed): ``per_case[label]`` (None: untested)."""

    label: str
    per_task: dict[str, Difference | None]


@dataclass(frozen=True)
class SeedComparison:
    """One model's second-seed stage (see :func:`seed_comparison`)."""

    seeds: list[int]
    cases: list[tuple[str, str]]  # (task, series)
    series: dict[str, SeedEntry]  # "task/series" -> entry
    columns: list[str]  # "task seed s"
    pairs: list[PerCase]


@dataclass(frozen=True)
class LrCheck:
    """One (model, method) of the lr check: the chosen lr, and per lr the best score per task, their mean and the
    whole first step relative to the embedding RMS, measured (``first_steps``; None: not measured)."""

    model: str
    method: str
    chosen: float | None
    by_lr: dict[float, dict[str, float | None]]  # lr -> task -> best
    means: dict[float, float | None]
    whole_steps: dict[float, float | None]


@dataclass(frozen=True)
class AblationEntry:
    label: str
    best: dict[str, float | None]  # column -> best
    final: dict[str, float | None]
    mean_best: float | None  # over the columns
    whole_step: float | None  # the measured whole first step relative to the embedding RMS (``first_steps``)
    versus_main: dict[str, Difference | None] | None  # None for the main run itself


@dataclass(frozen=True)
class Ablation:
    columns: list[str]  # a task, or "task seed s" where a task has several seeds
    entries: list[AblationEntry]  # the main run first


@dataclass(frozen=True)
class DropoutComparison:
    """MiniLM: every series (method, dropout off / on) per task."""

    model: str
    tasks: list[str]
    variants: list[str]
    summaries: Summaries
    best: dict[str, dict[str, float | None]]  # task -> variant -> best
    average: dict[str, float | None]  # variant -> mean best over the tasks
    majority_average: float | None


@dataclass(frozen=True)
class PlanComparisons:
    """One model's head to head: its pairs, and each series against the majority floor; ``not_informative``: the
    tasks where every series is within noise of the floor (or below it)."""

    model: str
    tasks: list[str]
    pairs: list[Comparison]
    floors: list[Comparison]
    not_informative: list[str]


@dataclass(frozen=True)
class QualityNumbers:
    """Everything the report shows. ``series`` and ``floors``: model -> task -> ...; the sections by model."""

    grid: tuple[RunSpec, ...]
    finished: int
    finished_by_stage: dict[str, tuple[int, int]]  # stage -> (finished, planned), stages with runs
    failed_unfinished: int
    environments: list[tuple[tuple, int]]  # (ENVIRONMENT_KEYS values, runs), most runs first
    floors: dict[str, dict[str, Floor]]
    series: dict[str, Summaries]
    main: dict[str, MainComparison]
    seeds: dict[str, SeedComparison]
    lr_check: list[LrCheck]
    lr_check_tasks: list[str]
    ablation: Ablation | None
    dropout: DropoutComparison | None
    head_to_head: list[PlanComparisons]


def quality_numbers(grid: Sequence[RunSpec], results_dir: Path) -> QualityNumbers:
    """Every number of the report, from the results folder alone."""
    results = ResultSet(grid, results_dir)
    steps = FirstSteps.load(results_dir)
    failed = [run_id for run_id in failure_counts(results_dir) if results.by_id.get(run_id) is None]
    by_stage = {stage: (sum(results.by_id[s.run_id] is not None for s in specs), len(specs))
                for stage in STAGES if (specs := results.stage(stage))}  # fmt: skip
    recorded = [r.final.get("environment") or {} for r in results.found]
    environments = Counter(tuple(env.get(k, "not recorded") for k in ENVIRONMENT_KEYS) for env in recorded)
    floors = floor_table(results)
    series: dict[str, Summaries] = {}
    main = {}
    for model in ordered(s.model for s in results.stage(MAIN)):
        main[model] = main_comparison(results, model, floors[model])
        series.setdefault(model, {}).update(main[model].summaries)
    seeds = {model: seeds for model in main if (seeds := seed_comparison(results, model)) is not None}
    dropout = dropout_comparison(results, floors)
    if dropout is not None:
        series.setdefault(dropout.model, {}).update(dropout.summaries)
    return QualityNumbers(
        grid=results.grid,
        finished=len(results.found),
        finished_by_stage=by_stage,
        failed_unfinished=len(failed),
        environments=sorted(environments.items(), key=lambda item: -item[1]),
        floors=floors,
        series=series,
        main=main,
        seeds=seeds,
        lr_check=lr_check(results, steps),
        lr_check_tasks=ordered(s.task for s in results.stage(LR_CHECK)),
        ablation=ablation(results, steps),
        dropout=dropout,
        head_to_head=[plan_comparisons(results, series, floors, plan) for plan in comparison_plans(results)],
    )


def floor_table(results: ResultSet) -> dict[str, dict[str, Floor]]:
    """model -> task -> majority-class floor and zero-shot score of the base model (same eval examples)."""
    table: dict[str, dict[str, Floor]] = {}
    for model, task in ordered((s.model, s.task) for s in results.grid):
        same = [r for r in results.found if (r.spec.model, r.spec.task) == (model, task)]
        zero_shot = [r.last for r in same if r.spec.stage == ZERO_SHOT]
        table.setdefault(model, {})[task] = Floor(majority_floor(same), zero_shot[0] if zero_shot else None)
    return table


def main_comparison(results: ResultSet, model: str, floors: Mapping[str, Floor]) -> MainComparison:
    specs = [s for s in results.stage(MAIN) if s.model == model]
    tasks, methods = ordered(s.task for s in specs), ordered(s.series for s in specs)
    summaries = {t: {m: results.summary(model, t, m, (MAIN, SEED)) for m in methods} for t in tasks}
    average = {m: {k: mean_or_none(getattr(summaries[t][m] or SeriesSummary(), k) for t in tasks)
                   for k in SUMMARY_KEYS} for m in methods}  # fmt: skip
    floor_average = {k: mean_or_none(getattr(floors[t], k) for t in tasks) for k in ("majority", "zero_shot")}
    return MainComparison(tasks, methods, summaries, average, floor_average)


def seed_comparison(results: ResultSet, model: str) -> SeedComparison | None:
    """The second-seed stage of one model: each series' best at every seed and each extra seed against the main
    seed; the first series against the others at each seed separately, by the best score and at the first
    evaluation. Differences carry their paired-bootstrap interval over the eval examples, so a seed-to-seed
    difference larger than that interval is noise of training, not of the eval set."""
    seed_specs = [s for s in results.stage(SEED) if s.model == model]
    if not seed_specs:
        return None
    stages = (MAIN, SEED)
    main_seed = next(s.seed for s in results.stage(MAIN) if s.model == model)
    seeds = [main_seed, *sorted({s.seed for s in seed_specs} - {main_seed})]
    cases = ordered((s.task, s.series) for s in seed_specs)
    keys = [(task, series, seed) for task, series in cases for seed in seeds]
    runs = {key: results.runs(model, key[0], key[1], stages, key[2]) for key in keys}
    summary = {key: series_summary(runs[key]) or SeriesSummary() for key in keys}
    side = {key: resampled_runs(runs[key]) for key in keys}
    first_eval = {key: resampled_runs(runs[key], EVAL_STEPS) for key in keys}

    def versus(a: tuple, b: tuple, sides: Mapping[tuple, Side | None], key: str) -> Difference | None:
        return paired(sides[a], sides[b], getattr(summary[a], key), getattr(summary[b], key))

    entries = {}
    for task, series in cases:
        best = {seed: summary[task, series, seed].best for seed in seeds}
        spread = {seed: versus((task, series, seed), (task, series, main_seed), side, "best") for seed in seeds[1:]}
        entries[f"{task}/{series}"] = SeedEntry(best, spread)

    names = ordered(series for _, series in cases)
    columns = {(task, seed): f"{task} seed {seed}" for task in ordered(t for t, _ in cases) for seed in seeds}
    pairs = []
    for other in names[1:]:
        for sides, key, suffix in ((side, "best", ""), (first_eval, "first_eval", f", step {EVAL_STEPS}")):
            per_case = {label: versus((t, names[0], seed), (t, other, seed), sides, key)
                        for (t, seed), label in columns.items() if (t, other, seed) in summary}  # fmt: skip
            pairs.append(PerCase(f"{names[0]} vs {other}{suffix}", per_case))
    return SeedComparison(seeds, cases, entries, list(columns.values()), pairs)


def lr_check(results: ResultSet, steps: FirstSteps) -> list[LrCheck]:
    """Best score per (method, lr) on each check task, their mean, the whole first step, and the lr the runner
    uses."""
    specs = results.stage(LR_CHECK)
    tasks = ordered(s.task for s in specs)
    checks = []
    for model, method in ordered((s.model, s.method) for s in specs):
        try:
            chosen: float | None = lr_from_check(model, method, results.grid, results.results_dir)
        except LrCheckError:
            chosen = None
        by_lr, means, whole_steps = {}, {}, {}
        for lr in ordered(s.lr for s in specs if (s.model, s.method) == (model, method)):
            run = {s.task: results.by_id[s.run_id] for s in specs if (s.model, s.method, s.lr) == (model, method, lr)}
            scores = [run[t].best if run.get(t) else None for t in tasks]
            by_lr[lr], means[lr] = dict(zip(tasks, scores, strict=True)), mean_or_none(scores)
            whole_steps[lr] = steps.of_runs([r for r in run.values() if r is not None])
        checks.append(LrCheck(model, method, chosen, by_lr, means, whole_steps))
    return checks


def ablation(results: ResultSet, steps: FirstSteps) -> Ablation | None:
    """The ablation variants beside the main run of the same method, task and seed (best / final), one column
    per task and seed of the ablation stage (named by the task alone where each task has one seed); each
    variant's best against the main run's of the same seed."""
    specs = results.stage(ABLATION)
    if not specs:
        return None
    model, method = specs[0].model, specs[0].method
    cases = ordered((s.task, s.seed) for s in specs)
    one_seed = len({t for t, _ in cases}) == len(cases)
    columns = [t if one_seed else f"{t} seed {seed}" for t, seed in cases]
    main_m = SuperPosPromptConfig.__dataclass_fields__["m"].default if method == "superpos" else None
    named = [(f"{method}{f' m={main_m}' if main_m else ''} (main run)", method, (MAIN, SEED))]
    named += [(series, series, (ABLATION,)) for series in ordered(s.series for s in specs)]
    entries: list[AblationEntry] = []
    main_best: list[float | None] = []
    main_sides: list[Side | None] = []
    for label, series, stages in named:
        cells = [results.summary(model, t, series, stages, seed) or SeriesSummary() for t, seed in cases]
        best, final = [c.best for c in cells], [c.final for c in cells]
        runs = [results.runs(model, t, series, stages, seed) for t, seed in cases]
        sides = [resampled_runs(case_runs) for case_runs in runs]
        versus_main = None
        if entries:  # a variant: its best against the main run's of the same seed, paired bootstrap
            versus_main = {c: paired(sides[i], main_sides[i], best[i], main_best[i]) for i, c in enumerate(columns)}
        else:
            main_best, main_sides = best, sides
        best_by_column, final_by_column = dict(zip(columns, best, strict=True)), dict(zip(columns, final, strict=True))
        whole_step = steps.of_runs([run for case_runs in runs for run in case_runs])
        entries.append(AblationEntry(label, best_by_column, final_by_column, mean_or_none(best), whole_step,
                                     versus_main))  # fmt: skip
    return Ablation(columns, entries)


def dropout_comparison(results: ResultSet, floors: Mapping[str, Mapping[str, Floor]]) -> DropoutComparison | None:
    """Best score per task of every MiniLM series (dropout off / on)."""
    specs = results.stage(MINILM)
    if not specs:
        return None
    model = specs[0].model
    tasks, variants = ordered(s.task for s in specs), ordered(s.series for s in specs)
    summaries = {t: {v: results.summary(model, t, v, (MINILM,)) for v in variants} for t in tasks}
    best = {t: {v: s.best if (s := summaries[t][v]) else None for v in variants} for t in tasks}
    average = {v: mean_or_none(best[t][v] for t in tasks) for v in variants}
    majority = mean_or_none(floors[model][t].majority for t in tasks)
    return DropoutComparison(model, tasks, variants, summaries, best, average, majority)


#: What the head to head compares on one model: (model, stages, series, pairs as (label, first, second)).
Plan = tuple[str, tuple[str, ...], list[str], list[tuple[str, str, str]]]


def comparison_plans(results: ResultSet) -> list[Plan]:
    """On each model of the main stage the first method (SuperPos) against every other; on MiniLM, dropout off
    against on for each method."""
    plans: list[Plan] = []
    for model in ordered(s.model for s in results.stage(MAIN)):
        names = ordered(s.series for s in results.stage(MAIN) if s.model == model)
        pairs = [(f"{names[0]} vs {other}", names[0], other) for other in names[1:]]
        plans.append((model, (MAIN, SEED), names, pairs))
    for model in ordered(s.model for s in results.stage(MINILM)):
        specs = [s for s in results.stage(MINILM) if s.model == model]
        methods = ordered(s.method for s in specs)
        pairs = [(f"{m}, dropout off vs on", f"{m}, dropout off", f"{m}, dropout on") for m in methods]
        plans.append((model, (MINILM,), ordered(s.series for s in specs), pairs))
    return plans


def plan_comparisons(
    results: ResultSet, series: Mapping[str, Summaries], floors: Mapping[str, Mapping[str, Floor]], plan: Plan
) -> PlanComparisons:
    """The :func:`compare` rows of one plan's pairs (best scores with seeds merged, each task's difference tested
    by a paired bootstrap over the predictions of the best evaluations, and at the first evaluation), and of each
    of its series against the majority floor."""
    model, stages, names, pairs = plan
    tasks = list(series.get(model, {}))
    summary = {n: {t: series[model][t].get(n) for t in tasks} for n in names}
    runs = {n: {t: results.runs(model, t, n, stages) for t in tasks} for n in names}
    side = {n: {t: resampled_runs(runs[n][t]) for t in tasks} for n in names}
    first_eval = {n: {t: resampled_runs(runs[n][t], EVAL_STEPS) for t in tasks} for n in names}
    majority = {t: floors[model][t].majority for t in tasks}
    floor_side: dict[str, Side | None] = {}
    for t in tasks:
        examples = next((side[n][t][0] for n in names if side[n][t] is not None), None)
        floor_side[t] = None if examples is None else (examples, resampled_floor(t, examples[1]))

    def value(name: str, task: str, key: str) -> float | None:
        return getattr(summary[name][task] or SeriesSummary(), key)

    def pair(a: str, b: str, sides: Mapping[str, Mapping[str, Side | None]]) -> dict:
        return {t: (sides[a][t], sides[b][t]) for t in tasks}

    above_floor = {n: {t: paired(side[n][t], floor_side[t], value(n, t, "best"), majority[t]) for t in tasks}
                   for n in names}  # fmt: skip
    learned = {n: {t for t, d in above_floor[n].items() if d and d.verdict == Verdict.BETTER} for n in names}

    def not_informative(among: Sequence[str]) -> list[str]:
        """The tasks where every series of ``among`` is tested against the floor and none is above it."""
        return [t for t in tasks if all(above_floor[n][t] and t not in learned[n] for n in among)]

    floor = {t: SeriesSummary(best=majority[t]) for t in tasks}
    pair_rows = [compare(f"{model}: {label}", summary[a], summary[b], pair(a, b, side), learned[a] & learned[b],
                         pair(a, b, first_eval), not_informative((a, b)))
                 for label, a, b in pairs]  # fmt: skip
    floor_rows = [compare(f"{model}: {n} vs majority floor", summary[n], floor,
                          {t: (side[n][t], floor_side[t]) for t in tasks}, learned[n])
                  for n in names]  # fmt: skip
    return PlanComparisons(model, tasks, pair_rows, floor_rows, not_informative(names))
