"""The quality report as text: Markdown tables (:func:`report_tables`), ``report.md`` (:func:`report_markdown`) and
``report.json`` (:func:`report_json`), from the numbers of ``quality_numbers.py``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

from benchmarks.quality_grid import BATCH_SIZE, EVAL_STEPS, MAX_EVAL_SAMPLES, STAGES, RunSpec
from benchmarks.quality_numbers import (
    ENVIRONMENT_KEYS,
    Ablation,
    DropoutComparison,
    LrCheck,
    MainComparison,
    PlanComparisons,
    QualityNumbers,
    SeedComparison,
)
from benchmarks.quality_stats import Comparison, Difference, Floor, SeriesSummary, Tested, ordered
from peft_superpos.metrics.bootstrap import Verdict

#: Section titles of report.md, by table name (``{model}-<kind>`` for the per-model tables).
TABLE_TITLES = {
    "status": "Status",
    "grid": "The grid",
    "environments": "Where the finished runs computed (final.json's `environment`; older runs: not recorded)",
    "best": "{model}: best score per task, beside the majority-class and zero-shot floors of the same eval examples "
    "(not informative: every method within noise of the majority floor, or below it)",
    "average": "{model}: average over the tasks",
    "detail": "{model}: per task and method",
    "seeds": "{model}: best score at each seed; each extra seed against the main seed (95 % paired-bootstrap "
    "interval over the eval examples; bold: it excludes 0)",
    "seed-pairs": "{model}: the first method against the others at each seed separately, by the best score and at "
    "the first evaluation (95 % paired-bootstrap interval; bold: it excludes 0)",
    "lr-check": "Learning-rate check (best score; the chosen lr has the highest mean, ties go to the paper's 1e-2)",
    "ablation": "SuperPos ablations: m and softmax (best / final score)",
    "ablation-differences": "SuperPos ablations: each variant's best against the main run of the same seed (95 % "
    "paired-bootstrap interval; bold: it excludes 0)",
    "minilm": "MiniLM (SEQ_CLS): backbone dropout off vs on (best score; not informative: every variant within noise "
    "of the majority floor, or below it)",
    "head-to-head": "Head to head: best score per task (seeds merged) over the tasks both sides have finished; "
    "better / worse: the 95 % paired-bootstrap interval of the task's difference excludes 0, counted over the "
    "informative tasks (not informative: both sides within noise of the majority floor, or below it); difference: "
    "of the mean best scores, with the 95 % paired-bootstrap interval of the mean of the per-task differences "
    "(examples resampled within each task)",
    "pairs": "{model}: difference of best scores per task (95 % paired-bootstrap interval; bold: it excludes 0; n.i.: "
    "not informative, both sides within noise of the majority floor or below it), and their mean over the tasks",
    "pairs-first-eval": "{model}: difference of the scores at the first evaluation per task (step 100; 95 % "
    "paired-bootstrap interval; bold: it excludes 0; n.i.: not informative, as above), and their mean over the tasks",
    "floor": "{model}: each method above the majority floor per task (95 % paired-bootstrap interval; bold: it "
    "excludes 0), and the mean over the tasks",
}


def step_cell(value: float | None) -> str:
    """A step relative to the embedding RMS, to 3 significant digits."""
    return "—" if value is None else f"{value:.3g}"


def fmt(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def md_table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str | None = None) -> str:
    align = align or "---|" + "---:|" * (len(header) - 1)
    lines = ["| " + " | ".join(header) + " |", "|" + align]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def difference_cell(entry: Difference | None) -> str:
    """A difference and its 95 % interval, in bold where the interval excludes 0; "—": untested."""
    if entry is None:
        return "—"
    text = f"{entry.difference:+.1f}"
    text = text if entry.verdict == Verdict.WITHIN_NOISE else f"**{text}**"
    return f"{text} ({entry.low:+.1f} to {entry.high:+.1f})"


def differences_table(cases: Sequence[str], columns: Sequence[tuple[str, Mapping[str, Difference | None]]]) -> str:
    """Cases (tasks, or tasks and seeds) down, comparisons across: ``(title, per case difference)``."""
    header = ["task", *(title for title, _ in columns)]
    return md_table(header, [[case, *(difference_cell(per.get(case)) for _, per in columns)] for case in cases])


def tested_table(tasks: Sequence[str], columns: Sequence[tuple[str, Tested]]) -> str:
    """Tasks down, comparisons across: each task's difference ("n.i.": not informative), then their mean over the
    tasks (pooled interval)."""
    rows = [[t, *(difference_cell(c.per_task.get(t)) + (" n.i." if t in c.not_informative else "")
                  for _, c in columns)] for t in tasks]  # fmt: skip
    rows.append(["**average**", *(difference_cell(c.pooled) for _, c in columns)])
    return md_table(["task", *(title for title, _ in columns)], rows)


def counts_cell(counts: Tested) -> str:
    notes = [f"{n} {what}" for n, what in ((len(counts.not_informative), "not informative"),
                                           (counts.untested, "untested")) if n]  # fmt: skip
    return f"{counts.better} / {counts.within_noise} / {counts.worse}" + (f" ({', '.join(notes)})" if notes else "")


def task_label(task: str, not_informative: Sequence[str]) -> str:
    return f"{task} (not informative)" if task in not_informative else task


def report_tables(numbers: QualityNumbers) -> dict[str, str]:
    """Every table of the report by name, in the order of report.md."""
    tables = {"status": status_line(numbers), "environments": environments_table(numbers)}
    tables["grid"] = grid_table(numbers.grid)
    not_informative = {plan.model: plan.not_informative for plan in numbers.head_to_head}
    for model, main in numbers.main.items():
        tables.update(main_tables(model, main, numbers.floors[model], not_informative.get(model, [])))
        if model in numbers.seeds:
            tables.update(seed_tables(model, numbers.seeds[model]))
    if any(check.by_lr for check in numbers.lr_check):
        tables["lr-check"] = lr_check_table(numbers.lr_check, numbers.lr_check_tasks)
    if numbers.ablation is not None:
        tables.update(ablation_tables(numbers.ablation))
    if numbers.dropout is not None:
        model = numbers.dropout.model
        tables["minilm"] = dropout_table(numbers.dropout, numbers.floors[model], not_informative.get(model, []))
    for plan in numbers.head_to_head:
        tables.update(plan_tables(plan))
    tables["head-to-head"] = head_to_head_table([row for plan in numbers.head_to_head
                                                 for row in (*plan.pairs, *plan.floors)])  # fmt: skip
    return tables


def status_line(numbers: QualityNumbers) -> str:
    stages = [f"{stage} {done}/{planned}" for stage, (done, planned) in numbers.finished_by_stage.items()]
    return (
        f"{numbers.finished} of {len(numbers.grid)} planned runs finished ({', '.join(stages)}); "
        f"{numbers.failed_unfinished} unfinished runs have failed at least once (failures.jsonl)."
    )


def environments_table(numbers: QualityNumbers) -> str:
    """Where the finished runs computed (``environment`` of final.json: the session that finished the run)."""
    rows = [[*map(str, env), str(n)] for env, n in numbers.environments]
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


def main_tables(
    model: str, main: MainComparison, floor: Mapping[str, Floor], not_informative: Sequence[str]
) -> dict[str, str]:
    """``{model}-best`` (tasks where no method is above the majority floor marked), ``{model}-average`` and
    ``{model}-detail``."""
    tasks, methods, average = main.tasks, main.methods, main.average
    cell = {t: {m: main.summaries[t][m] or SeriesSummary() for m in methods} for t in tasks}
    rows = [[task_label(t, not_informative), fmt(floor[t].majority), fmt(floor[t].zero_shot),
             *(fmt(cell[t][m].best) for m in methods)] for t in tasks]  # fmt: skip
    rows.append(["**average**", fmt(main.floor_average["majority"]), fmt(main.floor_average["zero_shot"]),
                 *(fmt(average[m]["best"]) for m in methods)])  # fmt: skip
    tables = {f"{model}-best": md_table(["task", "majority floor", "zero-shot", *methods], rows)}
    tables[f"{model}-average"] = md_table(
        ["method", "best", "final", "steps to 90 % of best", f"train loss, steps 1-{EVAL_STEPS}", "invalid % at best",
         "s/step"],
        [[m, fmt(average[m]["best"]), fmt(average[m]["final"]), fmt(average[m]["steps_to_90"], 0),
          fmt(average[m]["early_train_loss"], 3), fmt(average[m]["invalid_at_best"]),
          fmt(average[m]["seconds_per_step"], 2)]
         for m in methods],
    )  # fmt: skip
    detail = [
        [t, m, str(len(c.seeds)), fmt(c.best), fmt(c.final), fmt(c.steps_to_90, 0), fmt(c.early_train_loss, 3),
         fmt(c.invalid_at_best), fmt(c.top_class_at_best), fmt(floor[t].majority), fmt(floor[t].zero_shot)]
        for t in tasks
        for m, c in cell[t].items()
    ]  # fmt: skip
    tables[f"{model}-detail"] = md_table(
        ["task", "method", "seeds", "best", "final", "steps to 90 % of best", f"train loss, steps 1-{EVAL_STEPS}",
         "invalid % at best", "top class % at best", "majority floor", "zero-shot"],
        detail,
        align="---|---|" + "---:|" * 9,
    )  # fmt: skip
    return tables


def seed_tables(model: str, seeds: SeedComparison) -> dict[str, str]:
    """``{model}-seeds`` and ``{model}-seed-pairs``."""
    main_seed, others = seeds.seeds[0], seeds.seeds[1:]
    rows = []
    for task, series in seeds.cases:
        entry = seeds.series[f"{task}/{series}"]
        rows.append([task, series, *(fmt(entry.best[seed]) for seed in seeds.seeds),
                     *(difference_cell(entry.versus_main_seed[seed]) for seed in others)])  # fmt: skip
    header = ["task", "method", *(f"best, seed {s}" for s in seeds.seeds),
              *(f"seed {s} - seed {main_seed}" for s in others)]  # fmt: skip
    return {
        f"{model}-seeds": md_table(header, rows, align="---|---|" + "---:|" * (2 * len(seeds.seeds) - 1)),
        f"{model}-seed-pairs": differences_table(seeds.columns, [(p.label, p.per_task) for p in seeds.pairs]),
    }


def lr_check_table(checks: Sequence[LrCheck], tasks: Sequence[str]) -> str:
    rows = []
    for check in checks:
        for lr, best in check.by_lr.items():
            mark = " (chosen)" if lr == check.chosen else ""
            rows.append([f"{check.model} {check.method}", f"{lr:g}{mark}", step_cell(check.whole_steps[lr]),
                         *(fmt(best[t]) for t in tasks), fmt(check.means[lr])])  # fmt: skip
    header = ["run", "lr", "whole step / RMS", *(f"{t} best" for t in tasks), "mean"]
    return md_table(header, rows, align="---|---|" + "---:|" * (len(tasks) + 2))


def ablation_tables(ablation: Ablation) -> dict[str, str]:
    rows = [[e.label, step_cell(e.whole_step), *(f"{fmt(e.best[c])} / {fmt(e.final[c])}" for c in ablation.columns),
             fmt(e.mean_best)] for e in ablation.entries]  # fmt: skip
    tests = [(e.label, e.versus_main) for e in ablation.entries if e.versus_main is not None]
    header = ["variant", "whole step / RMS", *(f"{c} best / final" for c in ablation.columns), "mean best"]
    return {
        "ablation": md_table(header, rows),
        "ablation-differences": differences_table(ablation.columns, tests),
    }


def dropout_table(dropout: DropoutComparison, floor: Mapping[str, Floor], not_informative: Sequence[str]) -> str:
    variants = dropout.variants
    rows = [[task_label(t, not_informative), fmt(floor[t].majority), *(fmt(dropout.best[t][v]) for v in variants)]
            for t in dropout.tasks]  # fmt: skip
    rows.append(["**average**", fmt(dropout.majority_average), *(fmt(dropout.average[v]) for v in variants)])
    return md_table(["task", "majority floor", *(f"{v} best" for v in variants)], rows)


def plan_tables(plan: PlanComparisons) -> dict[str, str]:
    """Per model, tables of the per-task differences: pairs, pairs at the first evaluation, above the floor."""
    prefix = f"{plan.model}: "

    def title(row: Comparison, suffix: str = "") -> str:
        return row.label.removeprefix(prefix).removesuffix(suffix)

    return {
        f"{plan.model}-pairs": tested_table(plan.tasks, [(title(r), r) for r in plan.pairs]),
        f"{plan.model}-pairs-first-eval": tested_table(
            plan.tasks, [(title(r), r.first_eval) for r in plan.pairs if r.first_eval]
        ),
        f"{plan.model}-floor": tested_table(plan.tasks, [(title(r, " vs majority floor"), r) for r in plan.floors]),
    }


def head_to_head_table(rows: Sequence[Comparison]) -> str:
    table_rows = [
        [r.label, str(len(r.tasks)), counts_cell(r), counts_cell(r.first_eval) if r.first_eval else "—",
         fmt(r.first_best), fmt(r.second_best),
         difference_cell(r.pooled) if r.pooled else fmt(None if r.first_best is None else r.first_best - r.second_best),
         f"{fmt(r.first_steps_to_90, 0)} / {fmt(r.second_steps_to_90, 0)}",
         f"{fmt(r.first_early_train_loss, 3)} / {fmt(r.second_early_train_loss, 3)}"]
        for r in rows
    ]  # fmt: skip
    return md_table(
        ["comparison (first vs second)", "tasks", "first better / within noise / worse",
         f"at step {EVAL_STEPS}: better / within noise / worse", "mean best, first",
         "mean best, second", "difference (95 % interval)", "steps to 90 %, first / second (tasks both learn)",
         f"train loss, steps 1-{EVAL_STEPS}, first / second"],
        table_rows,
        align="---|" + "---:|" * 8,
    )  # fmt: skip


def table_title(name: str, titles: Mapping[str, str] = TABLE_TITLES) -> str:
    """The title of table ``name``: ``titles[name]``, or ``titles[kind]`` for ``<model>-<kind>``."""
    if name in titles:
        return titles[name]
    model, kind = name.split("-", 1)
    return titles[kind].format(model=model)


def report_markdown(tables: Mapping[str, str]) -> str:
    parts = [
        "# Quality suite report",
        "",
        "Generated by `python -m benchmarks.quality_suite report` from the results in this folder. Scores are "
        "the task's score (mean of its metrics, 0-100) on the first 300 validation examples; means over seeds "
        'where there are two; "—": not finished yet. Learning curves: `curves/`.',
    ]
    for name, table in tables.items():
        parts += ["", f"## {table_title(name)}", "", table]
    return "\n".join(parts) + "\n"


def report_json(numbers: QualityNumbers, tables: Mapping[str, str]) -> dict[str, Any]:
    """The content of report.json: the numbers by section, and the tables."""
    report: dict[str, Any] = {"planned": len(numbers.grid), "finished": numbers.finished, "tables": dict(tables)}
    report["floors"] = {model: {t: asdict(f) for t, f in floors.items()} for model, floors in numbers.floors.items()}
    report["series"] = {model: {t: {n: asdict(s) if s else None for n, s in by_series.items()}
                                for t, by_series in tasks.items()}
                        for model, tasks in numbers.series.items()}  # fmt: skip
    report["not_informative"] = {plan.model: plan.not_informative for plan in numbers.head_to_head}
    if numbers.main:
        report["average"] = {model: {"methods": main.average, "floors": main.floor_average}
                             for model, main in numbers.main.items()}  # fmt: skip
    if numbers.seeds:
        report["seeds"] = {model: {"series": {k: asdict(e) for k, e in seeds.series.items()},
                                   "pairs": [asdict(p) for p in seeds.pairs]}
                           for model, seeds in numbers.seeds.items()}  # fmt: skip
    report["lr_check"] = {
        f"{c.model}/{c.method}": {"chosen": c.chosen, "by_lr": {f"{lr:g}": {"best": best, "mean": c.means[lr]}
                                                                for lr, best in c.by_lr.items()}}
        for c in numbers.lr_check
    }  # fmt: skip
    report["ablation"] = {} if numbers.ablation is None else {
        e.label: {"best": e.best, "final": e.final} | ({} if e.versus_main is None else {
            "versus_main": {c: asdict(d) if d else None for c, d in e.versus_main.items()}})
        for e in numbers.ablation.entries
    }  # fmt: skip
    if numbers.dropout is not None:
        report["minilm"] = {"best": numbers.dropout.best, "average": numbers.dropout.average}
    report["head_to_head"] = [asdict(row) for plan in numbers.head_to_head for row in (*plan.pairs, *plan.floors)]
    return report
