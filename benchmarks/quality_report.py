"""The quality suite's report, built from the results folder alone (never the run folders), so it can be
regenerated from what is committed: ``python benchmarks/quality_suite.py report`` writes ``report.md``,
``report.json`` and the learning-curve PNGs there, then regenerates ``benchmarks/RESULTS.md``
(``make_results.py``). Runs that are not finished show as "—", so the report works on a partial grid. Its head
to head tests each task's difference with a paired bootstrap over the per-example predictions of the best
evaluations (``peft_superpos.metrics.bootstrap``), so a gap of one example on COPA's 100 does not count as a win.
"""

from __future__ import annotations

import functools
import json
import math
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from quality_grid import (
    ABLATION,
    BATCH_SIZE,
    DEFAULT_RESULTS_DIR,
    EVAL_STEPS,
    LR_CHECK,
    MAIN,
    MAX_EVAL_SAMPLES,
    MINILM,
    SEED,
    STAGES,
    ZERO_SHOT,
    LrCheckError,
    RunResult,
    RunSpec,
    failure_counts,
    load_result,
    lr_from_check,
    prediction_files,
    read_rows_plain,
)

from peft_superpos import SuperPosPromptConfig
from peft_superpos.data import get_task
from peft_superpos.harness.callbacks import atomic_write_text
from peft_superpos.harness.evaluation import best_constant_prediction, constant_prediction_floor
from peft_superpos.metrics.bootstrap import Verdict, bootstrap_scores, paired_difference

REPORT_FILES = ("report.md", "report.json")
CURVES_DIR = "curves"

# ----------------------------------------------------------------------------------------------------------
# Floors, predictions, summaries
# ----------------------------------------------------------------------------------------------------------

REPO_ROOT = Path(__file__).resolve().parents[1]


def majority_floor(results: Iterable[RunResult]) -> float | None:
    """The best score of a constant prediction on the runs' eval examples: ``floors.majority`` of a final.json,
    else computed from the gold labels of a saved predictions file."""
    results = list(results)
    for result in results:
        floor = (result.final.get("floors") or {}).get("majority")
        if floor is not None:
            return float(floor["score"] if isinstance(floor, dict) else floor)
    for result in results:
        for path in prediction_files(result.folder):
            saved = read_predictions(path, result.spec.task)
            if saved is not None:
                return constant_prediction_floor(get_task(result.spec.task), saved.golds)
    return None


@dataclass(frozen=True)
class SavedPredictions:
    """One evaluation's per-example records, parsed: example ids, gold labels and predictions as label ids
    (STS-B: scores, the golds rounded to 0.2 as saved; ``None``: an invalid prediction)."""

    ids: tuple[int, ...]
    golds: tuple[int | float, ...]
    preds: tuple[int | float | None, ...]


def read_predictions(path: Path, task_name: str) -> SavedPredictions | None:
    """A predictions file as the harness writes it (one JSON object a line: ``id``, and ``gold`` and ``pred`` as
    label words); None if it is missing or empty, or a gold label does not parse."""
    task = get_task(task_name)
    rows = read_rows_plain(path)
    golds = [task.parse_prediction(str(row.get("gold"))) for row in rows]
    if not rows or any(g is None for g in golds):
        return None
    preds = tuple(task.parse_prediction(str(row.get("pred"))) for row in rows)
    return SavedPredictions(tuple(int(row["id"]) for row in rows), tuple(golds), preds)  # type: ignore[arg-type]


def mean_or_none(values: Iterable[float | None]) -> float | None:
    values = list(values)
    return float(np.mean(values)) if values and all(v is not None for v in values) else None


def series_summary(results: Sequence[RunResult]) -> dict[str, Any] | None:
    """Mean over seeds of best, final, steps to 90 %, invalid rate at best, s/step; the mean curve with the lowest
    and highest seed's score at each step."""
    if not results:
        return None
    steps = sorted(set.intersection(*({int(r["step"]) for r in result.scored} for result in results)))
    curves = [{int(r["step"]): r["eval_score"] for r in result.scored} for result in results]
    return {
        "seeds": [r.spec.seed for r in results],
        "best": mean_or_none(r.best for r in results),
        "final": mean_or_none(r.last for r in results),
        "steps_to_90": mean_or_none(r.steps_to_90 for r in results),
        "invalid_at_best": mean_or_none(r.invalid_at_best for r in results),
        "top_class_at_best": mean_or_none(r.top_class_at_best for r in results),
        "early_train_loss": mean_or_none(r.early_train_loss for r in results),
        "first_eval": mean_or_none(r.score_at(EVAL_STEPS) for r in results),
        "seconds_per_step": mean_or_none(r.seconds_per_step for r in results),
        "curve": {
            "steps": steps,
            "scores": [float(np.mean([c[s] for c in curves])) for s in steps],
            "low": [float(min(c[s] for c in curves)) for s in steps],
            "high": [float(max(c[s] for c in curves)) for s in steps],
        },
    }


def stability(best: Mapping[str, Mapping[str, float | None]], methods: Sequence[str]) -> dict[str, Any]:
    """The paper's stability measure. ``best[task][method]`` -> per task, z-score the methods' scores across
    methods (population std; all-equal scores give 0); per method, the population std across tasks of its
    z-scores. Uses the tasks where every method has a score; None with fewer than two such tasks."""
    tasks = [t for t, scores in best.items() if all(scores.get(m) is not None for m in methods)]
    if len(tasks) < 2 or len(methods) < 2:
        return {"tasks": tasks, "std_of_z": {m: None for m in methods}}
    z = {}
    for task in tasks:
        values = np.array([best[task][m] for m in methods], dtype=float)
        spread = values.std()
        z[task] = (values - values.mean()) / spread if spread > 0 else np.zeros_like(values)
    return {
        "tasks": tasks,
        "std_of_z": {m: float(np.std([z[t][i] for t in tasks])) for i, m in enumerate(methods)},
    }


def fmt(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def md_table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str | None = None) -> str:
    align = align or "---|" + "---:|" * (len(header) - 1)
    lines = ["| " + " | ".join(header) + " |", "|" + align]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def ordered(values: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(values))


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
    ) -> dict[str, Any] | None:
        """:func:`series_summary` of the finished runs of one series (all seeds, or ``seed``)."""
        return series_summary(self.runs(model, task, series, stages, seed))


def build_report(grid: Sequence[RunSpec], results_dir: Path) -> dict[str, Any]:
    """Every number and table of the report, from the results folder alone (no plotting)."""
    results = ResultSet(grid, results_dir)
    report: dict[str, Any] = {"planned": len(grid), "finished": len(results.found), "tables": {}}
    report["tables"]["status"] = status_line(results)
    report["tables"]["environments"] = environments_table(results)
    report["tables"]["grid"] = grid_table(grid)
    report["floors"] = floors(results)
    report["series"] = {}
    for model in ordered(s.model for s in results.stage(MAIN)):
        main_comparison(results, model, report)
        seed_section(results, report, model)
    lr_check_section(results, report)
    ablation_section(results, report)
    minilm_section(results, report)
    head_to_head_section(results, report)
    return report


def status_line(results: ResultSet) -> str:
    failed = [run_id for run_id in failure_counts(results.results_dir) if results.by_id.get(run_id) is None]
    stages = []
    for stage in STAGES:
        specs = results.stage(stage)
        if specs:
            stages.append(f"{stage} {sum(results.by_id[s.run_id] is not None for s in specs)}/{len(specs)}")
    return (
        f"{len(results.found)} of {len(results.grid)} planned runs finished ({', '.join(stages)}); "
        f"{len(failed)} unfinished runs have failed at least once (failures.jsonl)."
    )


ENVIRONMENT_KEYS = ("device", "torch_threads", "torch", "transformers", "peft")


def environments_table(results: ResultSet) -> str:
    """Where the finished runs computed (``environment`` of final.json: the session that finished the run)."""
    recorded = [r.final.get("environment") or {} for r in results.found]
    counts = Counter(tuple(env.get(k, "not recorded") for k in ENVIRONMENT_KEYS) for env in recorded)
    rows = [[*map(str, env), str(n)] for env, n in sorted(counts.items(), key=lambda item: -item[1])]
    return md_table([*(k.replace("_", " ") for k in ENVIRONMENT_KEYS), "runs"], rows, align="---|" * 5 + "---:|")


def grid_table(grid: Sequence[RunSpec]) -> str:
    """What the grid runs, stage by stage (from the specs, so it follows any resizing of the budgets)."""
    rows = []
    for stage in STAGES:
        specs = [s for s in grid if s.stage == stage]
        for model in ordered(s.model for s in specs):
            mine = [s for s in specs if s.model == model]
            steps = sorted({s.max_steps for s in mine if s.max_steps})
            budget = "eval only" if not steps else str(steps[0]) if len(steps) == 1 else f"{steps[0]}-{steps[-1]}"
            rows.append([
                stage, model, ", ".join(ordered(s.task for s in mine)), "; ".join(ordered(s.series for s in mine)),
                budget, ", ".join(str(seed) for seed in ordered(s.seed for s in mine)), str(len(mine)),
            ])  # fmt: skip
    table = md_table(
        ["stage", "model", "tasks", "settings", "steps", "seeds", "runs"], rows, "---|---|---|---|---:|---:|---:|"
    )
    return (
        f"{table}\n\nEvery run: batch {BATCH_SIZE}, evaluation every {EVAL_STEPS} steps (and at the end) on the first "
        f"{MAX_EVAL_SAMPLES} validation examples."
    )


def floors(results: ResultSet) -> dict[str, dict[str, dict[str, float | None]]]:
    """model -> task -> majority-class floor and zero-shot score of the base model (same eval examples)."""
    table: dict[str, dict[str, dict[str, float | None]]] = {}
    for model, task in ordered((s.model, s.task) for s in results.grid):
        same = [r for r in results.found if (r.spec.model, r.spec.task) == (model, task)]
        zero_shot = [r.last for r in same if r.spec.stage == ZERO_SHOT]
        table.setdefault(model, {})[task] = {
            "majority": majority_floor(same),
            "zero_shot": zero_shot[0] if zero_shot else None,
        }
    return table


SUMMARY_KEYS = (
    "best",
    "final",
    "steps_to_90",
    "invalid_at_best",
    "top_class_at_best",
    "early_train_loss",
    "seconds_per_step",
)


def main_comparison(results: ResultSet, model: str, report: dict[str, Any]) -> None:
    """Per task and method (seeds of the second-seed stage merged), averages, stability."""
    specs = [s for s in results.stage(MAIN) if s.model == model]
    tasks, methods = ordered(s.task for s in specs), ordered(s.series for s in specs)
    summaries = {t: {m: results.summary(model, t, m, (MAIN, SEED)) for m in methods} for t in tasks}
    report["series"].setdefault(model, {}).update(summaries)
    cell = {t: {m: summaries[t][m] or {} for m in methods} for t in tasks}
    best = {t: {m: cell[t][m].get("best") for m in methods} for t in tasks}
    stab = stability(best, methods)
    average = {m: {k: mean_or_none(cell[t][m].get(k) for t in tasks) for k in SUMMARY_KEYS} for m in methods}
    floor = report["floors"][model]
    floor_average = {k: mean_or_none(floor[t][k] for t in tasks) for k in ("majority", "zero_shot")}
    report.setdefault("stability", {})[model] = stab
    report.setdefault("average", {})[model] = {"methods": average, "floors": floor_average}

    tables = report["tables"]
    rows = [[t, fmt(floor[t]["majority"]), fmt(floor[t]["zero_shot"]), *(fmt(best[t][m]) for m in methods)]
            for t in tasks]  # fmt: skip
    rows.append(["**average**", fmt(floor_average["majority"]), fmt(floor_average["zero_shot"]),
                 *(fmt(average[m]["best"]) for m in methods)])  # fmt: skip
    tables[f"{model}-best"] = md_table(["task", "majority floor", "zero-shot", *methods], rows)
    tables[f"{model}-average"] = md_table(
        ["method", "best", "final", "steps to 90 % of best", f"train loss, steps 1-{EVAL_STEPS}", "invalid % at best",
         "std of z-scores", "s/step"],
        [[m, fmt(average[m]["best"]), fmt(average[m]["final"]), fmt(average[m]["steps_to_90"], 0),
          fmt(average[m]["early_train_loss"], 3), fmt(average[m]["invalid_at_best"]), fmt(stab["std_of_z"][m], 2),
          fmt(average[m]["seconds_per_step"], 2)]
         for m in methods],
    )  # fmt: skip

    detail = [
        [t, m, str(len(cell[t][m].get("seeds", []))), fmt(cell[t][m].get("best")), fmt(cell[t][m].get("final")),
         fmt(cell[t][m].get("steps_to_90"), 0), fmt(cell[t][m].get("early_train_loss"), 3),
         fmt(cell[t][m].get("invalid_at_best")), fmt(cell[t][m].get("top_class_at_best")),
         fmt(floor[t]["majority"]), fmt(floor[t]["zero_shot"])]
        for t in tasks
        for m in methods
    ]  # fmt: skip
    tables[f"{model}-detail"] = md_table(
        ["task", "method", "seeds", "best", "final", "steps to 90 % of best", f"train loss, steps 1-{EVAL_STEPS}",
         "invalid % at best", "top class % at best", "majority floor", "zero-shot"],
        detail,
        align="---|---|" + "---:|" * 9,
    )  # fmt: skip


def seed_section(results: ResultSet, report: dict[str, Any], model: str) -> None:
    """The second-seed stage of one model: each series' best at every seed and each extra seed against the main
    seed (``{model}-seeds``); the first series against the others at each seed separately, by the best score and
    at the first evaluation (``{model}-seed-pairs``). Differences carry their paired-bootstrap interval over the
    eval examples, so a seed-to-seed difference larger than that interval is noise of training, not of the eval
    set."""
    seed_specs = [s for s in results.stage(SEED) if s.model == model]
    if not seed_specs:
        return
    stages = (MAIN, SEED)
    main_seed = next(s.seed for s in results.stage(MAIN) if s.model == model)
    seeds = [main_seed, *sorted({s.seed for s in seed_specs} - {main_seed})]
    cases = ordered((s.task, s.series) for s in seed_specs)
    keys = [(task, series, seed) for task, series in cases for seed in seeds]
    runs = {key: results.runs(model, key[0], key[1], stages, key[2]) for key in keys}
    summary = {key: series_summary(runs[key]) or {} for key in keys}
    side = {key: resampled_runs(runs[key]) for key in keys}
    first_eval = {key: resampled_runs(runs[key], EVAL_STEPS) for key in keys}

    def versus(a: tuple, b: tuple, sides: Mapping[tuple, Side | None], key: str) -> dict[str, Any] | None:
        return paired(sides[a], sides[b], summary[a].get(key), summary[b].get(key))

    entries, rows = {}, []
    for task, series in cases:
        best = {seed: summary[task, series, seed].get("best") for seed in seeds}
        spread = {seed: versus((task, series, seed), (task, series, main_seed), side, "best") for seed in seeds[1:]}
        entries[f"{task}/{series}"] = {"best": best, "versus_main_seed": spread}
        rows.append([task, series, *(fmt(best[seed]) for seed in seeds),
                     *(difference_cell(spread[seed]) for seed in seeds[1:])])  # fmt: skip
    header = ["task", "method", *(f"best, seed {s}" for s in seeds), *(f"seed {s} - seed {main_seed}"
                                                                       for s in seeds[1:])]  # fmt: skip
    tables = report["tables"]
    tables[f"{model}-seeds"] = md_table(header, rows, align="---|---|" + "---:|" * (2 * len(seeds) - 1))

    names = ordered(series for _, series in cases)
    columns = {(task, seed): f"{task} seed {seed}" for task in ordered(t for t, _ in cases) for seed in seeds}
    pairs = []
    for other in names[1:]:
        for sides, key, suffix in ((side, "best", ""), (first_eval, "first_eval", f", step {EVAL_STEPS}")):
            per_case = {label: versus((t, names[0], seed), (t, other, seed), sides, key)
                        for (t, seed), label in columns.items() if (t, other, seed) in summary}  # fmt: skip
            pairs.append({"label": f"{names[0]} vs {other}{suffix}", "per_task": per_case})
    report.setdefault("seeds", {})[model] = {"series": entries, "pairs": pairs}
    tables[f"{model}-seed-pairs"] = differences_table(list(columns.values()), pairs, prefix="")


def lr_check_section(results: ResultSet, report: dict[str, Any]) -> None:
    """Best score per (method, lr) on each check task, their mean, and the lr the runner uses."""
    specs = results.stage(LR_CHECK)
    tasks = ordered(s.task for s in specs)
    rows, data = [], {}
    for model, method in ordered((s.model, s.method) for s in specs):
        try:
            chosen: float | None = lr_from_check(model, method, results.grid, results.results_dir)
        except LrCheckError:
            chosen = None
        entry: dict[str, Any] = {"chosen": chosen, "by_lr": {}}
        for lr in ordered(s.lr for s in specs if (s.model, s.method) == (model, method)):
            run = {s.task: results.by_id[s.run_id] for s in specs if (s.model, s.method, s.lr) == (model, method, lr)}
            scores = [run[t].best if run.get(t) else None for t in tasks]
            entry["by_lr"][f"{lr:g}"] = {"best": dict(zip(tasks, scores, strict=True)), "mean": mean_or_none(scores)}
            mark = " (chosen)" if lr == chosen else ""
            rows.append([f"{model} {method}", f"{lr:g}{mark}", *(fmt(s) for s in scores), fmt(mean_or_none(scores))])
        data[f"{model}/{method}"] = entry
    report["lr_check"] = data
    if rows:
        header = ["run", "lr", *(f"{t} best" for t in tasks), "mean"]
        report["tables"]["lr-check"] = md_table(header, rows, align="---|---|" + "---:|" * (len(tasks) + 1))


def ablation_section(results: ResultSet, report: dict[str, Any]) -> None:
    """The ablation variants beside the main run of the same method, task and seed (best / final), one column
    per task and seed of the ablation stage (named by the task alone where each task has one seed)."""
    specs = results.stage(ABLATION)
    report["ablation"] = {}
    if not specs:
        return
    model, method = specs[0].model, specs[0].method
    cases = ordered((s.task, s.seed) for s in specs)
    one_seed = len({t for t, _ in cases}) == len(cases)
    columns = [t if one_seed else f"{t} seed {seed}" for t, seed in cases]
    main_m = SuperPosPromptConfig.__dataclass_fields__["m"].default if method == "superpos" else None
    named = [(f"{method}{f' m={main_m}' if main_m else ''} (main run)", method, (MAIN, SEED))]
    named += [(series, series, (ABLATION,)) for series in ordered(s.series for s in specs)]
    rows, tests = [], []
    main_best: list[float | None] = []
    main_sides: list[Side | None] = []
    for label, series, stages in named:
        cells = [results.summary(model, t, series, stages, seed) or {} for t, seed in cases]
        best, final = [c.get("best") for c in cells], [c.get("final") for c in cells]
        sides = [resampled_runs(results.runs(model, t, series, stages, seed)) for t, seed in cases]
        entry = {"best": dict(zip(columns, best, strict=True)), "final": dict(zip(columns, final, strict=True))}
        if main_sides:  # a variant: its best against the main run's of the same seed, paired bootstrap
            entry["versus_main"] = {c: paired(sides[i], main_sides[i], best[i], main_best[i])
                                    for i, c in enumerate(columns)}  # fmt: skip
            tests.append({"label": label, "per_task": entry["versus_main"]})
        else:
            main_best, main_sides = best, sides
        report["ablation"][label] = entry
        rows.append(
            [label, *(f"{fmt(b)} / {fmt(f)}" for b, f in zip(best, final, strict=True)), fmt(mean_or_none(best))]
        )
    header = ["variant", *(f"{c} best / final" for c in columns), "mean best"]
    report["tables"]["ablation"] = md_table(header, rows)
    report["tables"]["ablation-differences"] = differences_table(columns, tests, prefix="")


def minilm_section(results: ResultSet, report: dict[str, Any]) -> None:
    """Best score per task of every MiniLM series (dropout off / on), beside the majority floor."""
    specs = results.stage(MINILM)
    if not specs:
        return
    model = specs[0].model
    tasks, variants = ordered(s.task for s in specs), ordered(s.series for s in specs)
    summaries = {t: {v: results.summary(model, t, v, (MINILM,)) for v in variants} for t in tasks}
    report["series"].setdefault(model, {}).update(summaries)
    best = {t: {v: (summaries[t][v] or {}).get("best") for v in variants} for t in tasks}
    majority = {t: report["floors"][model][t]["majority"] for t in tasks}
    report["minilm"] = {"best": best, "average": {v: mean_or_none(best[t][v] for t in tasks) for v in variants}}
    rows = [[t, fmt(majority[t]), *(fmt(best[t][v]) for v in variants)] for t in tasks]
    rows.append(["**average**", fmt(mean_or_none(majority.values())),
                 *(fmt(report["minilm"]["average"][v]) for v in variants)])  # fmt: skip
    report["tables"]["minilm"] = md_table(["task", "majority floor", *(f"{v} best" for v in variants)], rows)


# ----------------------------------------------------------------------------------------------------------
# Head to head: paired bootstrap over the saved per-example predictions
# ----------------------------------------------------------------------------------------------------------

BOOTSTRAP_RESAMPLES = 1000  # paired resamples of the eval examples (seed 0), the same for every comparison

#: A side of a comparison on one task: ((example ids, gold labels), its score on each resample).
Side = tuple[tuple[tuple[int, ...], tuple[int | float, ...]], np.ndarray]


@functools.cache
def resampled_file(path: Path, version: tuple[int, int], task: str) -> Side | None:
    """The examples of one predictions file and its score on each resample (cached per file ``version``: the
    suite refreshes the report after every run, and only new files cost time)."""
    saved = read_predictions(path, task)
    if saved is None:
        return None
    return (saved.ids, saved.golds), bootstrap_scores(task, saved.preds, saved.golds, resamples=BOOTSTRAP_RESAMPLES)


def resampled_runs(runs: Sequence[RunResult], step: int | None = None) -> Side | None:
    """The runs' predictions at ``step`` (None: each run's best evaluation), scored on the resamples and averaged
    over the runs (the seeds of a series); None if a run has no such predictions file or the runs' examples
    differ."""
    sides = []
    for run in runs:
        path = run.predictions_at(step)
        if path is None or not path.is_file():
            return None
        stat = path.stat()
        sides.append(resampled_file(path, (stat.st_mtime_ns, stat.st_size), run.spec.task))
    if not sides or None in sides or len({examples for examples, _ in sides}) != 1:
        return None
    return sides[0][0], np.mean([scores for _, scores in sides], axis=0)


@functools.cache
def resampled_floor(task_name: str, golds: tuple[int | float, ...]) -> np.ndarray:
    """The score on each resample of the constant prediction that gives the majority floor."""
    constant = best_constant_prediction(get_task(task_name), golds)
    return bootstrap_scores(task_name, [constant] * len(golds), golds, resamples=BOOTSTRAP_RESAMPLES)


def paired(first: Side | None, second: Side | None, first_score: Any, second_score: Any) -> dict[str, Any] | None:
    """The difference of two scores with its 95 % paired-bootstrap interval and verdict; None when a side has no
    predictions or the sides were evaluated on different examples."""
    if first is None or second is None or first[0] != second[0] or first_score is None or second_score is None:
        return None
    result = paired_difference(first[1], second[1], first_score - second_score)
    return {"difference": result.difference, "low": result.low, "high": result.high, "verdict": result.verdict.value}


def tested(differences: Mapping[str, Mapping[str, Any] | None], tasks: Sequence[str]) -> dict[str, Any]:
    """The :func:`paired` results of ``tasks`` (``per_task``) and how many are better / within noise / worse,
    and untested (None)."""
    per_task = {t: differences.get(t) for t in tasks}
    verdicts = [(d or {}).get("verdict") for d in per_task.values()]
    return {"better": verdicts.count(Verdict.BETTER), "within_noise": verdicts.count(Verdict.WITHIN_NOISE),
            "worse": verdicts.count(Verdict.WORSE), "untested": verdicts.count(None), "per_task": per_task}  # fmt: skip


def compare(
    label: str,
    first: Mapping[str, Mapping[str, Any]],
    second: Mapping[str, Mapping[str, Any]],
    differences: Mapping[str, dict[str, Any] | None],
    learned: Iterable[str],
    first_eval_differences: Mapping[str, dict[str, Any] | None] | None = None,
) -> dict:
    """Head to head over the tasks where both sides have a best score: on how many tasks ``first`` is better,
    within noise or worse (:func:`tested`: the :func:`paired` ``differences[task]`` of the best scores; under
    ``first_eval`` the same for the scores at the first evaluation, when given), the mean best of each, the mean
    early train loss of each (where both have it) and the mean steps to 90 % of each over the ``learned`` tasks
    (both sides above the majority floor: at the floor, 90 % of the best is reached by chance). ``first[task]``
    / ``second[task]`` are :func:`series_summary` dicts (a floor is ``{"best": value}``)."""
    tasks = [t for t in first if first[t].get("best") is not None and (second.get(t) or {}).get("best") is not None]

    def both(key: str, over: Sequence[str]) -> tuple[float | None, float | None]:
        """Mean of ``key`` on each side over the tasks of ``over`` where both sides have it."""
        common = [t for t in over if first[t].get(key) is not None and second[t].get(key) is not None]
        return mean_or_none(first[t][key] for t in common), mean_or_none(second[t][key] for t in common)

    first_steps, second_steps = both("steps_to_90", [t for t in tasks if t in set(learned)])
    first_loss, second_loss = both("early_train_loss", tasks)
    return {
        "label": label,
        "tasks": tasks,
        **tested(differences, tasks),
        "first_eval": None if first_eval_differences is None else tested(first_eval_differences, tasks),
        "first_best": mean_or_none(first[t]["best"] for t in tasks),
        "second_best": mean_or_none(second[t]["best"] for t in tasks),
        "first_steps_to_90": first_steps,
        "second_steps_to_90": second_steps,
        "first_early_train_loss": first_loss,
        "second_early_train_loss": second_loss,
    }


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


def plan_comparisons(results: ResultSet, report: Mapping[str, Any], plan: Plan) -> tuple[list[dict], list[dict]]:
    """The :func:`compare` rows of one plan's pairs, and of each of its series against the majority floor."""
    model, stages, names, pairs = plan
    tasks = list(report["series"].get(model, {}))
    summary = {n: {t: report["series"][model][t].get(n) or {} for t in tasks} for n in names}
    runs = {n: {t: results.runs(model, t, n, stages) for t in tasks} for n in names}
    side = {n: {t: resampled_runs(runs[n][t]) for t in tasks} for n in names}
    first_eval = {n: {t: resampled_runs(runs[n][t], EVAL_STEPS) for t in tasks} for n in names}
    majority = {t: report["floors"][model][t]["majority"] for t in tasks}
    floor_side: dict[str, Side | None] = {}
    for t in tasks:
        examples = next((side[n][t][0] for n in names if side[n][t] is not None), None)
        floor_side[t] = None if examples is None else (examples, resampled_floor(t, examples[1]))

    def differences(a: str, b: str, sides: Mapping[str, Mapping[str, Side | None]], key: str) -> dict[str, Any]:
        return {t: paired(sides[a][t], sides[b][t], summary[a][t].get(key), summary[b][t].get(key)) for t in tasks}

    above_floor = {n: {t: paired(side[n][t], floor_side[t], summary[n][t].get("best"), majority[t]) for t in tasks}
                   for n in names}  # fmt: skip
    learned = {n: {t for t, d in above_floor[n].items() if d and d["verdict"] == Verdict.BETTER} for n in names}
    floor = {t: {"best": majority[t]} for t in tasks}
    pair_rows = [compare(f"{model}: {label}", summary[a], summary[b], differences(a, b, side, "best"),
                         learned[a] & learned[b], differences(a, b, first_eval, "first_eval"))
                 for label, a, b in pairs]  # fmt: skip
    floor_rows = [compare(f"{model}: {n} vs majority floor", summary[n], floor, above_floor[n], learned[n])
                  for n in names]  # fmt: skip
    return pair_rows, floor_rows


def head_to_head_section(results: ResultSet, report: dict[str, Any]) -> None:
    """The questions of issue 7 as generated comparisons (:func:`comparison_plans`, then every series against
    the majority floor), best scores with seeds merged, each task's difference tested by a paired bootstrap over
    the predictions of the best evaluations; per model, tables of the per-task differences."""
    rows = []
    for plan in comparison_plans(results):
        model, tasks = plan[0], list(report["series"].get(plan[0], {}))
        pair_rows, floor_rows = plan_comparisons(results, report, plan)
        report["tables"][f"{model}-pairs"] = differences_table(tasks, pair_rows, f"{model}: ")
        early = [{**row, "per_task": row["first_eval"]["per_task"]} for row in pair_rows]
        report["tables"][f"{model}-pairs-first-eval"] = differences_table(tasks, early, f"{model}: ")
        report["tables"][f"{model}-floor"] = differences_table(tasks, floor_rows, f"{model}: ", " vs majority floor")
        rows += pair_rows + floor_rows
    report["head_to_head"] = rows
    table_rows = [
        [r["label"], str(len(r["tasks"])),
         counts_cell(r), counts_cell(r["first_eval"]) if r["first_eval"] else "—",
         fmt(r["first_best"]), fmt(r["second_best"]),
         fmt(None if r["first_best"] is None else r["first_best"] - r["second_best"]),
         f"{fmt(r['first_steps_to_90'], 0)} / {fmt(r['second_steps_to_90'], 0)}",
         f"{fmt(r['first_early_train_loss'], 3)} / {fmt(r['second_early_train_loss'], 3)}"]
        for r in rows
    ]  # fmt: skip
    report["tables"]["head-to-head"] = md_table(
        ["comparison (first vs second)", "tasks", "first better / within noise / worse",
         f"at step {EVAL_STEPS}: better / within noise / worse", "mean best, first",
         "mean best, second", "difference", "steps to 90 %, first / second (tasks both learn)",
         f"train loss, steps 1-{EVAL_STEPS}, first / second"],
        table_rows,
        align="---|" + "---:|" * 8,
    )  # fmt: skip


def counts_cell(counts: Mapping[str, int]) -> str:
    untested = f" ({counts['untested']} untested)" if counts["untested"] else ""
    return f"{counts['better']} / {counts['within_noise']} / {counts['worse']}{untested}"


def differences_table(tasks: Sequence[str], rows: Sequence[Mapping[str, Any]], prefix: str, suffix: str = "") -> str:
    """Tasks (or cases) down, comparisons across: each task's difference (``rows[i]["per_task"][task]``) and its
    95 % interval, in bold where the interval excludes 0; column titles are the labels less prefix and suffix."""

    header = ["task", *(r["label"].removeprefix(prefix).removesuffix(suffix) for r in rows)]
    return md_table(header, [[t, *(difference_cell(r["per_task"].get(t)) for r in rows)] for t in tasks])


def difference_cell(entry: Mapping[str, Any] | None) -> str:
    """A :func:`paired` difference and its 95 % interval, in bold where the interval excludes 0; "—": untested."""
    if entry is None:
        return "—"
    text = f"{entry['difference']:+.1f}"
    text = text if entry["verdict"] == Verdict.WITHIN_NOISE else f"**{text}**"
    return f"{text} ({entry['low']:+.1f} to {entry['high']:+.1f})"


def write_plots(report: Mapping[str, Any], folder: Path) -> list[Path]:
    """One PNG of learning curves per (model, task) with results (every series of ``report["series"]``, mean
    over seeds, the range of the seeds shaded; floors dashed), plus an overview of all of them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = []
    for model, tasks in report["series"].items():
        for task, series in tasks.items():
            curves = {
                label + (f" ({len(s['seeds'])} seeds, range shaded)" if len(s["seeds"]) > 1 else ""): s["curve"]
                for label, s in series.items()
                if s and s["curve"]["steps"]
            }
            if curves:
                panels.append((model, task, curves, report["floors"][model][task]))

    def draw(axis: Any, model: str, task: str, curves: Mapping[str, Any], floor: Mapping[str, Any]) -> None:
        for label, curve in curves.items():
            (line,) = axis.plot(curve["steps"], curve["scores"], marker="o", markersize=3, label=label)
            if curve["low"] != curve["high"]:  # two seeds or more: their range, shaded
                axis.fill_between(curve["steps"], curve["low"], curve["high"], color=line.get_color(), alpha=0.15)
        for name, style in (("majority", "--"), ("zero_shot", ":")):
            if floor.get(name) is not None:
                axis.axhline(floor[name], linestyle=style, color="grey", label=f"{name.replace('_', '-')} floor")
        axis.set_title(f"{model} / {task}")
        axis.set_xlabel("step")
        axis.set_ylabel("score")

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for panel in panels:
        fig, axis = plt.subplots(figsize=(6, 4))
        draw(axis, *panel)
        axis.legend(fontsize=7)
        fig.tight_layout()
        written.append(save_figure(fig, folder / f"{panel[0]}-{panel[1]}.png"))
        plt.close(fig)
    if panels:
        columns = min(4, len(panels))
        fig, axes = plt.subplots(math.ceil(len(panels) / columns), columns, figsize=(4 * columns, 3 * math.ceil(
            len(panels) / columns)), squeeze=False)  # fmt: skip
        for axis in axes.flat[len(panels) :]:
            axis.set_visible(False)
        for axis, panel in zip(axes.flat, panels, strict=False):
            draw(axis, *panel)
            axis.legend(fontsize=5)
        fig.tight_layout()
        written.append(save_figure(fig, folder / "overview.png"))
        plt.close(fig)
    return written


def save_figure(fig: Any, path: Path) -> Path:
    temporary = path.with_name(f".{path.stem}.tmp-{os.getpid()}.png")
    fig.savefig(temporary, dpi=90)
    os.replace(temporary, path)
    return path


#: Section titles of report.md, by table name (``{model}-<kind>`` for the per-model tables).
TABLE_TITLES = {
    "status": "Status",
    "grid": "The grid",
    "environments": "Where the finished runs computed (final.json's `environment`; older runs: not recorded)",
    "best": "{model}: best score per task, beside the majority-class and zero-shot floors of the same eval examples",
    "average": "{model}: average over the tasks; stability (std across tasks of each method's per-task z-score)",
    "detail": "{model}: per task and method",
    "seeds": "{model}: best score at each seed; each extra seed against the main seed (95 % paired-bootstrap "
    "interval over the eval examples; bold: it excludes 0)",
    "seed-pairs": "{model}: the first method against the others at each seed separately, by the best score and at "
    "the first evaluation (95 % paired-bootstrap interval; bold: it excludes 0)",
    "lr-check": "Learning-rate check (best score; the chosen lr has the highest mean, ties go to the paper's 1e-2)",
    "ablation": "SuperPos ablations: m and softmax (best / final score)",
    "ablation-differences": "SuperPos ablations: each variant's best against the main run of the same seed (95 % "
    "paired-bootstrap interval; bold: it excludes 0)",
    "minilm": "MiniLM (SEQ_CLS): backbone dropout off vs on (best score)",
    "head-to-head": "Head to head: best score per task (seeds merged) over the tasks both sides have finished; "
    "better / worse: the 95 % paired-bootstrap interval of the task's difference excludes 0",
    "pairs": "{model}: difference of best scores per task (95 % paired-bootstrap interval; bold: it excludes 0)",
    "pairs-first-eval": "{model}: difference of the scores at the first evaluation per task (step 100; 95 % "
    "paired-bootstrap interval; bold: it excludes 0)",
    "floor": "{model}: each method above the majority floor per task (95 % paired-bootstrap interval; bold: it "
    "excludes 0)",
}


def table_title(name: str) -> str:
    if name in TABLE_TITLES:
        return TABLE_TITLES[name]
    model, kind = name.split("-", 1)
    return TABLE_TITLES[kind].format(model=model)


def report_markdown(report: Mapping[str, Any]) -> str:
    parts = [
        "# Quality suite report",
        "",
        "Generated by `python benchmarks/quality_suite.py report` from the results in this folder. Scores are "
        "the task's score (mean of its metrics, 0-100) on the first 300 validation examples; means over seeds "
        'where there are two; "—": not finished yet. Learning curves: `curves/`.',
    ]
    for name, table in report["tables"].items():
        parts += ["", f"## {table_title(name)}", "", table]
    return "\n".join(parts) + "\n"


def write_report(grid: Sequence[RunSpec], results_dir: Path, plots: bool = True) -> dict[str, Any]:
    """Write report.md, report.json (and the PNGs) into ``results_dir``; returns the report."""
    report = build_report(grid, results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(
        results_dir / "report.json", json.dumps(report, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    )
    atomic_write_text(results_dir / "report.md", report_markdown(report))
    if plots:
        write_plots(report, results_dir / CURVES_DIR)
    return report


def write_outputs(grid: Sequence[RunSpec], results_dir: Path, plots: bool) -> tuple[dict[str, Any], list[Path]]:
    """The report files and, for the default results folder, RESULTS.md; returns the report and the text files
    written."""
    report = write_report(grid, results_dir, plots=plots)
    paths = [results_dir / name for name in REPORT_FILES]
    if results_dir.resolve() == DEFAULT_RESULTS_DIR:
        import make_results

        paths.append(make_results.write_results())
    return report, paths
