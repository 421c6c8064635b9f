"""Grid v2's report as Markdown tables and JSON, from :class:`QualityV2Numbers` (``quality_v2_numbers.py``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

from benchmarks.quality_render import difference_cell, fmt, md_table, step_cell, table_title, tested_table
from benchmarks.quality_stats import Floor
from benchmarks.quality_v2_numbers import (
    COLLAPSE_SHARE,
    STEP_REFERENCE_LR,
    MethodRow,
    QualityV2Numbers,
    StageA,
    StageB,
    StageC,
    StepPerLr,
)

#: Table name (``{model}``: the model) -> its title in report-v2.md.
TABLE_TITLES = {
    "status": "Finished runs by stage",
    "sweep": "{model}, Stage A: every learning rate on the development split (SST-2, 300 examples of train)",
    "tuned": "{model}, Stage A: each method at its learning rate, on the 872 validation examples of SST-2",
    "dev-seeds": "{model}, Stage A: each SuperPos init at its chosen lr on the development split, every seed",
    "default-init": "The default SuperPos init: the development score (best over the evaluations) at the chosen lr, "
    "mean over the seeds",
    "versus": "{model}, Stage A: each SuperPos init against the other settings (final score, validation)",
    "regime": "{model}, Stage B: small training sets, many epochs (validation, every example)",
    "regime-versus": "{model}, Stage B: each SuperPos init against every other setting (final score, per task and "
    "pooled)",
    "transfer": "Stage A: the step each setting chose on each model (does a scale-aware rule transfer?)",
    "first-steps": "The first AdamW step of each prompt setting per unit lr, relative to the embedding RMS, by path "
    f"(measured at lr {STEP_REFERENCE_LR:g}, `prompt-steps.md`)",
    "matched": "{model}, Stage C: SuperPos' m and softmax at its tuned whole step (SST-2, validation)",
}
ROW_HEADER = ["method", "lr", "ΔE step / RMS", "whole step / RMS", "final (95 % CI, seeds and examples)", "per seed",
              "best", "steps to 90 %", "invalid %", "collapsed %"]  # fmt: skip


def interval_cell(value: float | None, low: float | None, high: float | None) -> str:
    return fmt(value) + ("" if low is None or high is None else f" ({low:.1f}-{high:.1f})")


def method_cells(row: MethodRow) -> list[str]:
    """The cells of :data:`ROW_HEADER` after the method's name."""
    per_seed = ", ".join(f"{seed}: {fmt(score)}" for seed, score in zip(row.seeds, row.final_by_seed, strict=True))
    return [
        "—" if row.lr is None else f"{row.lr:g}",
        step_cell(row.relative_step),
        step_cell(row.first_step),
        interval_cell(row.final, row.final_low, row.final_high),
        per_seed,
        fmt(row.best),
        fmt(row.steps_to_90, 0),
        fmt(row.invalid),
        fmt(row.collapsed, 0),
    ]


def floor_rows(floor: Floor) -> list[list[str]]:
    blank = [""] * (len(ROW_HEADER) - 5)
    return [
        ["majority floor", "", "", "", fmt(floor.majority), *blank],
        ["zero-shot", "", "", "", fmt(floor.zero_shot), *blank],
    ]


def sweep_table(stage: StageA) -> str:
    """Every finished learning rate of every setting, the chosen one in bold."""
    rows = []
    for setting in stage.settings:
        for point in setting.sweep:
            chosen = point.lr == setting.chosen_lr
            lr = f"**{point.lr:g}**" if chosen else f"{point.lr:g}"
            edge = " (edge)" if chosen and setting.at_edge else ""
            rows.append([setting.label, lr + edge, step_cell(point.relative_step), step_cell(point.first_step),
                         fmt(point.best), fmt(point.final), fmt(point.top_class_at_best, 0)])  # fmt: skip
        if not setting.sweep:
            rows.append([setting.label, "not run yet", "", "", "", "", ""])
    rows.append(["majority floor", "", "", "", fmt(stage.dev_majority), "", ""])
    header = ["setting", "lr", "ΔE step / RMS", "whole step / RMS", "best (dev)", "final (dev)", "top class % at best"]
    return md_table(header, rows)


def tuned_table(stage: StageA) -> str:
    rows = [[s.label, *method_cells(s.confirm)] if s.confirm else [s.label, "not run yet", *[""] * 8]
            for s in stage.settings]  # fmt: skip
    return md_table(ROW_HEADER, [*rows, *floor_rows(stage.floor)])


def dev_seeds_table(stage: StageA) -> str:
    rows = [[s.label, f"{s.chosen_lr:g}", ", ".join(f"{d.seed}: {fmt(d.best)} / {fmt(d.final)}" for d in s.dev_seeds),
             fmt(s.dev_mean("best")), fmt(s.dev_mean("final"))] for s in stage.settings if s.dev_seeds]  # fmt: skip
    return md_table(["setting", "lr", "per seed: best / final (dev)", "mean best", "mean final"], rows)


def default_init_table(stages: Sequence[StageA]) -> str:
    """Each SuperPos init's mean development score per model and over the models (None until all finished): the
    init with the higher mean over the models is the default (``quality_grid_v2``, ``reseed``)."""
    by_model = [{s.label: s.dev_mean("best") for s in stage.settings if s.dev_seeds} for stage in stages]
    rows = []
    for label in dict.fromkeys(label for means in by_model for label in means):
        means = [model.get(label) for model in by_model]
        overall = None if None in means else sum(means) / len(means)
        rows.append([label, *map(fmt, means), fmt(overall)])
    return md_table(["setting", *(stage.model for stage in stages), "mean over the models"], rows)


def versus_table(stage: StageA) -> str:
    return md_table(["comparison", "difference (95 % CI)"], [[label, difference_cell(d)] for label, d in stage.versus])


def regime_table(stage: StageB) -> str:
    rows = []
    for task in stage.tasks:
        note = ", not informative" if task.not_informative else ""
        size = f"{task.train_examples} examples, {task.epochs:.1f} epochs" if task.epochs else "size when run"
        rows.append([f"**{task.task}** ({size}{note})", *[""] * (len(ROW_HEADER) - 1)])
        rows += [[row.label, *method_cells(row)] for row in task.rows]
        rows += floor_rows(task.floor)
    return md_table(ROW_HEADER, rows)


def regime_versus_table(stage: StageB) -> str:
    return tested_table([t.task for t in stage.tasks], stage.versus)


def matched_table(stage: StageC) -> str:
    """The tuned setting (m=128), then each variant with its difference from m=128 at the variant's seeds."""
    versus = dict(stage.versus)
    rows = [[stage.reference.label, *method_cells(stage.reference), ""]] if stage.reference else []
    rows += [[row.label, *method_cells(row), difference_cell(versus[f"{row.label} vs m=128"])] for row in stage.rows]
    return md_table(
        [*ROW_HEADER, "vs m=128 at the same seeds (95 % CI)"], rows or [["not run yet", *[""] * len(ROW_HEADER)]]
    )


def transfer_table(stages: Sequence[StageA]) -> str:
    """Per setting, the learning rate chosen on each model and its whole first step relative to the embedding RMS
    (measured): a rule that transfers across models shows as the same relative step in every column."""
    labels = [s.label for s in stages[0].settings]
    rows = []
    for label in labels:
        cells = []
        for stage in stages:
            setting = next(s for s in stage.settings if s.label == label)
            point = next((p for p in setting.sweep if p.lr == setting.chosen_lr), None)
            cells.append("—" if point is None else f"{point.lr:g} ({step_cell(point.first_step)})")
        rows.append([label, *cells])
    return md_table(["setting", *(f"{s.model}: lr (whole step / RMS)" for s in stages)], rows)


def first_steps_table(steps: Sequence[StepPerLr]) -> str:
    """Each setting's measured first step per unit lr on each model: the whole step and SuperPos' two paths."""
    models = list(dict.fromkeys(s.model for s in steps))
    by_key = {(s.label, s.model): s for s in steps}
    rows = []
    for label in dict.fromkeys(s.label for s in steps):
        cells = []
        for model in models:
            step = by_key.get((label, model))
            paths = (step.whole, step.through_delta, step.through_weights) if step else (None, None, None)
            cells.append(" / ".join(step_cell(value) for value in paths))
        rows.append([label, *cells])
    return md_table(["setting", *(f"{model}: whole / through ΔE / through p'" for model in models)], rows)


def report_v2_tables(numbers: QualityV2Numbers) -> dict[str, str]:
    """Table name -> Markdown table, in the order of report-v2.md."""
    status = [[stage, f"{done} / {planned}"] for stage, (done, planned) in numbers.finished_by_stage.items()]
    tables = {"status": md_table(["stage", "finished / planned"], status)}
    if numbers.steps_per_lr:
        tables["first-steps"] = first_steps_table(numbers.steps_per_lr)
    if numbers.stage_a:
        tables["transfer"] = transfer_table(numbers.stage_a)
        tables["default-init"] = default_init_table(numbers.stage_a)
    for stage in numbers.stage_a:
        tables[f"{stage.model}-sweep"] = sweep_table(stage)
        tables[f"{stage.model}-dev-seeds"] = dev_seeds_table(stage)
        tables[f"{stage.model}-tuned"] = tuned_table(stage)
        tables[f"{stage.model}-versus"] = versus_table(stage)
        for regime in (r for r in numbers.stage_b if r.model == stage.model):
            tables[f"{regime.model}-regime"] = regime_table(regime)
            tables[f"{regime.model}-regime-versus"] = regime_versus_table(regime)
        for matched in (c for c in numbers.stage_c if c.model == stage.model):
            tables[f"{matched.model}-matched"] = matched_table(matched)
    return tables


def report_v2_markdown(tables: Mapping[str, str], figures: Sequence[str]) -> str:
    parts = [
        "# Quality grid v2 report",
        "",
        "Generated by `python -m benchmarks.quality_suite report` from the results in this folder "
        "(`benchmarks/quality_grid_v2.py` says what runs and why). Settings are chosen on a development split of "
        "the training file; reported scores are the last evaluation (the step budget) on every validation "
        "example, the mean over seeds with a 95 % bootstrap interval over the examples; the best evaluation is "
        "beside it. ΔE step / RMS: the effective AdamW step per coordinate each run records (lr x mean_i sum_j "
        "|p'_ij| for SuperPos, its path through ΔE; lr for a free prompt table) over the RMS of the embeddings as "
        "the model sees them. whole step / RMS: the first AdamW step of the prompt tokens through every trained "
        "parameter (SuperPos: p' too; Residual: its MLP), measured on the model (`prompt-steps.md`), likewise "
        f"relative. collapsed %: the "
        f"evaluations where one label took at least {COLLAPSE_SHARE:.0f} % of the predictions. Differences in bold "
        'exclude 0. "—": not finished yet.',
        "",
        *(f"![score against whole step]({path})" for path in figures),
    ]
    for name, table in tables.items():
        parts += ["", f"## {table_title(name, TABLE_TITLES)}", "", table]
    return "\n".join(parts) + "\n"


def report_v2_json(numbers: QualityV2Numbers, tables: Mapping[str, str]) -> dict[str, Any]:
    """The content of report-v2.json: the numbers by stage, and the tables."""
    return {
        "finished_by_stage": {stage: list(counts) for stage, counts in numbers.finished_by_stage.items()},
        "steps_per_lr": [asdict(step) for step in numbers.steps_per_lr],
        "stage_a": [asdict(stage) for stage in numbers.stage_a],
        "stage_b": [asdict(stage) for stage in numbers.stage_b],
        "stage_c": [asdict(stage) for stage in numbers.stage_c],
        "tables": dict(tables),
    }
