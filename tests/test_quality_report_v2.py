"""Grid v2's report (benchmarks/quality_v2_numbers.py, quality_v2_render.py): the learning rate chosen on the
development split, each setting's final validation score over seeds with its interval and effective step, Stage B
with floors, collapse and "not informative" tasks, and the files one command writes."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from quality_results import write_first_steps, write_predictions, write_run

from benchmarks import quality_report, quality_suite
from benchmarks.quality_grid import CONFIRM, EXTEND, MATCHED, REGIME, RESEED, SWEEP, ZERO_SHOT, RunSpec
from benchmarks.quality_grid_v2 import GRID_V2
from benchmarks.quality_v2_numbers import quality_v2_numbers
from benchmarks.quality_v2_render import report_v2_tables

GOLDS = [i % 2 for i in range(40)]


def specs(stage: str, model: str = "gemma3", task: str = "sst2", **fields) -> list[RunSpec]:
    return [
        s
        for s in GRID_V2
        if (s.stage, s.model, s.task) == (stage, model, task) and all(getattr(s, k) == v for k, v in fields.items())
    ]


def finish(results: Path, spec: RunSpec, scores: dict[int, float], lr: float, l1: float = 1.0, **rows) -> Path:
    """A finished run of ``spec`` that recorded its learning rate and effective step (embedding RMS 0.5)."""
    step = {"lr": lr, "weight_l1": l1, "per_coordinate": lr * l1, "embedding_rms": 0.5, "relative": lr * l1 / 0.5}
    init = "normal" if spec.method == "superpos" else None
    extra = {"hyperparameters": {"lr": lr}, "step_size": step, "data": {"train_examples": 250},
             "config": {"method_settings": {"weight_init": init}}}  # fmt: skip
    write_run(results / spec.run_id, scores, final_extra=extra, **rows)
    return results / spec.run_id


FIRST_STEPS = {("gemma3", "superpos", "normal", None, False): 40.0, ("gemma3", "superpos", "normal", 16, False): 20.0,
               ("gemma3", "prompt_tuning", None, None, False): 2.0}  # fmt: skip
"""The measured whole first step per unit lr on Gemma 3 (prompt-steps.json)."""


def correct(share: float) -> list[int]:
    """Predictions of which the first ``share`` of GOLDS are right and the rest wrong."""
    right = int(share * len(GOLDS))
    return [g if i < right else 1 - g for i, g in enumerate(GOLDS)]


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Gemma 3's SuperPos (normal) and prompt tuning sweeps, their confirmations at two seeds, Stage B on CB where
    every method predicts one class, and Stage C's m=16 at two seeds (one folder for the module: the bootstrap of
    each evaluation is cached)."""
    tmp_path = tmp_path_factory.mktemp("results")
    sweeps = {("superpos", "normal"): {1e-3: 70.0, 3e-3: 88.0, 1e-2: 51.0, 3e-2: 50.0},
              ("prompt_tuning", None): {3e-3: 60.0, 1e-2: 70.0, 3e-2: 75.0, 1e-1: 80.0, 3e-1: 65.0}}  # fmt: skip
    for (method, init), scores in sweeps.items():
        for spec in [*specs(SWEEP, method=method), *specs(EXTEND, method=method)]:
            if spec.weight_init == init and spec.lr in scores:
                finish(tmp_path, spec, {100: scores[spec.lr] - 5, 400: scores[spec.lr]}, spec.lr, 9.0 if init else 1)
    reseed = specs(RESEED, weight_init="normal")[0]
    finish(tmp_path, reseed, {100: 84.0, 400: 80.0}, 3e-3, 9.0)  # the second seed on the development split
    shares = {("superpos", "normal", 42): 0.9, ("superpos", "normal", 7): 0.8, ("prompt_tuning", None, 42): 0.6,
              ("prompt_tuning", None, 7): 0.5, ("superpos", 16, 42): 0.7, ("superpos", 16, 7): 0.7}  # fmt: skip
    for (method, init, seed), share in shares.items():
        if init == 16:
            spec = specs(MATCHED, m=16, seed=seed)[0]
        else:
            spec = specs(CONFIRM, method=method, weight_init=init, seed=seed)[0]
        lr, l1 = (3e-3, 9.0) if init else (1e-1, 1.0)
        lr, l1 = (6e-3, 3.2) if init == 16 else (lr, l1)  # m=16 steps half as far per unit lr (FIRST_STEPS)
        folder = finish(tmp_path, spec, {100: 100 * share - 10, 400: 100 * share}, lr, l1, invalid=2.0, top_class=60)
        for step in (100, 400):
            write_predictions(folder, step, "sst2", GOLDS, correct(share if step == 400 else share - 0.1))
    write_first_steps(tmp_path, FIRST_STEPS)
    zero_shot = specs(ZERO_SHOT)[0]
    write_run(tmp_path / zero_shot.run_id, {0: 0.0}, final_extra={"floors": {"majority": 50.0}})
    cb_golds = [i % 3 for i in range(30)]
    for spec in specs(REGIME, task="cb"):
        folder = finish(tmp_path, spec, {100: 40.0, 200: 40.0, 300: 40.0}, 1e-2, top_class=100.0)
        write_predictions(folder, 300, "cb", cb_golds, [0] * len(cb_golds))
    return tmp_path


def test_stage_a_reports_the_dev_choice_and_the_final_validation_score_over_seeds(results):
    stage = quality_v2_numbers(GRID_V2, results).stage_a[0]
    settings = {s.label: s for s in stage.settings}
    superpos, tuning = settings["superpos normal"], settings["prompt_tuning"]
    assert (superpos.chosen_lr, superpos.at_edge) == (3e-3, False)
    assert (tuning.chosen_lr, tuning.at_edge) == (1e-1, False)  # the extension at 0.3 ran and lost
    assert [p.relative_step for p in superpos.sweep] == pytest.approx([lr * 9 / 0.5 for lr in (1e-3, 3e-3, 1e-2, 3e-2)])
    row = superpos.confirm
    assert row.seeds == [42, 7] and row.final_by_seed == [90.0, 80.0] and row.final == 85.0 and row.best == 85.0
    assert row.relative_step == pytest.approx(3e-3 * 9 / 0.5) and row.lr == 3e-3
    assert row.first_step == pytest.approx(3e-3 * 40) and tuning.confirm.first_step == pytest.approx(1e-1 * 2)
    assert [p.first_step for p in superpos.sweep] == pytest.approx([lr * 40 for lr in (1e-3, 3e-3, 1e-2, 3e-2)])
    assert row.final_low < 85.0 < row.final_high
    assert (row.invalid, row.collapsed) == (2.0, 0.0)
    assert stage.floor.majority == 50.0 and stage.floor.zero_shot == 0.0
    assert [(d.seed, d.best, d.final) for d in superpos.dev_seeds] == [(42, 88.0, 88.0), (7, 84.0, 80.0)]
    assert (superpos.dev_mean("best"), superpos.dev_mean("final")) == (86.0, 84.0)
    one_hot = settings["superpos one_hot"]
    assert one_hot.dev_seeds == [] and one_hot.dev_mean("best") is None  # nothing chosen yet
    assert tuning.dev_seeds == []  # no second seed for the other methods
    default_init = report_v2_tables(quality_v2_numbers(GRID_V2, results))["default-init"]
    assert "| superpos normal | 86.0 | — | — |" in default_init  # SmolLM2's runs are missing
    versus = dict(stage.versus)
    assert versus["superpos normal vs prompt_tuning"].difference == pytest.approx(30.0)
    assert versus["superpos normal vs prompt_tuning"].verdict == "better"
    assert versus["superpos normal vs residual"] is None  # not run
    assert list(versus) == [
        "superpos normal vs superpos one_hot",
        "superpos normal vs prompt_tuning",
        "superpos normal vs residual",
        "superpos one_hot vs prompt_tuning",
        "superpos one_hot vs residual",
    ]


def test_stage_b_marks_a_task_at_the_floor_not_informative(results):
    regime = quality_v2_numbers(GRID_V2, results).stage_b[0]
    cb = next(t for t in regime.tasks if t.task == "cb")
    assert cb.not_informative and cb.epochs == pytest.approx(300 * 8 / 250)
    assert [r.label for r in cb.rows] == ["superpos normal", "superpos one_hot", "prompt_tuning", "residual", "lora"]
    assert all(r.collapsed == 100.0 and r.final == 40.0 for r in cb.rows)
    assert [label for label, _ in regime.versus] == [
        "superpos normal vs superpos one_hot",
        "superpos normal vs prompt_tuning",
        "superpos normal vs residual",
        "superpos normal vs lora",
        "superpos one_hot vs prompt_tuning",
        "superpos one_hot vs residual",
        "superpos one_hot vs lora",
    ]
    versus = dict(regime.versus)["superpos normal vs lora"]
    assert versus.not_informative == ["cb"] and versus.per_task["cb"].difference == 0.0
    assert versus.pooled is None  # SST-2 and RTE are not run


def test_stage_c_sets_each_variant_beside_the_tuned_setting_at_the_same_effective_step(results):
    matched = quality_v2_numbers(GRID_V2, results).stage_c[0]
    assert matched.reference.label == "superpos m=128 (normal, tuned)" and matched.reference.final == 85.0
    (row,) = matched.rows
    assert row.label == "superpos m=16" and row.final == 70.0
    assert row.first_step == pytest.approx(matched.reference.first_step)  # the tuned setting's whole step
    difference = dict(matched.versus)["superpos m=16 vs m=128"]
    assert difference.difference == pytest.approx(-15.0) and difference.verdict == "worse"


def test_stage_c_pairs_a_variant_with_the_tuned_setting_at_the_variant_s_seeds_only(results, tmp_path):
    shutil.copytree(results, tmp_path, dirs_exist_ok=True)
    folder = finish(tmp_path, specs(MATCHED, m=64, seed=42)[0], {100: 80.0, 400: 90.0}, 4e-3, 6.4)
    for step in (100, 400):
        write_predictions(folder, step, "sst2", GOLDS, correct(0.9 if step == 400 else 0.8))
    matched = quality_v2_numbers(GRID_V2, tmp_path).stage_c[0]
    assert matched.reference.final == 85.0  # both seeds of m=128
    difference = dict(matched.versus)["superpos m=64 vs m=128"]
    assert difference.difference == 0.0 and difference.verdict == "within noise"  # against seed 42's 90.0 alone


def test_one_command_writes_both_reports_and_they_regenerate_identically(results):
    (report,), written = quality_report.write_outputs([GRID_V2], results, plots=True)
    assert [p.name for p in written] == ["report-v2.md", "report-v2.json"]
    text = (results / "report-v2.md").read_text()
    assert "| superpos normal | **0.003** | 0.054 | 0.12 | 88.0 | 88.0 | 50 |" in text
    assert "| superpos normal | 0.003 | 0.054 | 0.12 | 85.0 (" in text
    assert "**cb** (250 examples, 9.6 epochs, not informative)" in text
    assert "| superpos normal | 0.003 (0.12) | — |" in report["tables"]["transfer"]  # gemma3, then smollm2
    assert (results / "curves" / "v2-step-gemma3.png").is_file()
    assert report["tables"]["gemma3-sweep"] in text
    before = {name: (results / name).read_bytes() for name in ("report-v2.md", "report-v2.json")}
    quality_report.write_outputs([GRID_V2], results, plots=False)
    assert before == {name: (results / name).read_bytes() for name in before}


def test_a_grid_run_from_another_worktree_regenerates_the_results_checkouts_results_md(results, tmp_path):
    checkout = tmp_path / "checkout" / "benchmarks"
    shutil.copytree(results, checkout / "results" / "quality")
    (checkout / "RESULTS.template.md").write_text("# Results\n\n<!-- generated: quality_v2:gemma3-tuned -->\n")
    _, written = quality_report.write_outputs([GRID_V2], checkout / "results" / "quality", plots=False)
    assert written[-1] == checkout / "RESULTS.md"
    assert "| superpos normal | 0.003 | 0.054 | 0.12 | 85.0 (" in written[-1].read_text()


def test_the_report_command_writes_every_report_before_results_md(results, tmp_path):
    """RESULTS.md reads both reports: a stale one (written by an older grid) must not stop the command."""
    checkout = tmp_path / "checkout" / "benchmarks"
    shutil.copytree(results, checkout / "results" / "quality")
    (checkout / "results" / "quality" / "report-v2.json").write_text('{"tables": {}}')
    (checkout / "RESULTS.template.md").write_text(
        "<!-- generated: quality:status -->\n\n<!-- generated: quality_v2:transfer -->\n"
    )
    assert quality_suite.main(["report", "--results-dir", str(checkout / "results" / "quality"), "--no-plots"]) == 0
    assert "| superpos normal | 0.003 (0.12) | — |" in (checkout / "RESULTS.md").read_text()
