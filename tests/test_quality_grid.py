"""The quality suite's grid (benchmarks/quality_grid.py): its order and contents, a run's numbers as the results
folder holds them, and the learning rate taken from the lr check."""

from __future__ import annotations

import itertools
import json

import pytest
from quality_results import FakeHarness, lr_check_grid, option, write_lr_check, write_run

from benchmarks import quality_grid as qg
from benchmarks import quality_suite as qs
from benchmarks.quality_grid import ABLATION, LR_CHECK, MAIN, MINILM, SEED, ZERO_SHOT, RunSpec


def test_grid_v1_order_and_contents():
    grid = qg.GRID_V1
    stages = [s.stage for s in grid]
    assert {stage: stages.count(stage) for stage in qg.STAGES} == {
        ZERO_SHOT: 7, LR_CHECK: 12, MAIN: 28, SEED: 8, ABLATION: 8, MINILM: 16
    }  # fmt: skip
    # the main stage's long tasks go last, after the ablation and the second seed
    blocks = [(stage, sorted({s.task for s in group})) for stage, group in
              itertools.groupby(grid, key=lambda s: s.stage)]  # fmt: skip
    assert [stage for stage, _ in blocks] == [ZERO_SHOT, MINILM, LR_CHECK, MAIN, ABLATION, SEED, MAIN]
    assert (blocks[3][1], blocks[6][1]) == (sorted(qg.SHORT_TASKS), ["cb", "mrpc", "rte"])
    assert [s.task for s in grid if s.stage == MAIN][::4] == ["sst2", "cola", "copa", "stsb", "mrpc", "rte", "cb"]
    assert all(s.eval_only and s.model == "smollm2" for s in grid if s.stage == ZERO_SHOT)
    tuned = [s for s in grid if s.stage in (MAIN, SEED, ABLATION) and s.method in qg.TUNED_METHODS]
    assert tuned and all(s.lr == qg.FROM_LR_CHECK for s in tuned)
    assert all(s.lr is None for s in grid if s.method in ("residual", "lora"))
    assert len({s.run_id for s in grid}) == len(grid)
    with pytest.raises(ValueError, match="share the id"):
        qg.check_grid([grid[0], grid[0]])


def test_early_train_loss_is_the_first_full_window_only(tmp_path):
    spec = RunSpec(MAIN, "smollm2", "sst2", "superpos", max_steps=400)

    def result(rows: list[dict]) -> qg.RunResult:
        return qg.RunResult(spec, {}, rows, tmp_path)

    assert result([{"step": 100, "train_loss": 0.7}, {"step": 200, "train_loss": 0.2}]).early_train_loss == 0.7
    # a row averaged over fewer steps (resumed from a checkpoint of an older version) is not the same measure
    assert result([{"step": 100, "train_loss": 0.7, "train_loss_partial": True}]).early_train_loss is None
    assert result([{"step": 50, "train_loss": 0.7}, {"step": 150, "train_loss": 0.2}]).early_train_loss is None


def test_lr_comes_from_the_lr_check(tmp_path):
    results = tmp_path / "results"
    main = RunSpec(MAIN, "smollm2", "rte", "superpos", max_steps=100, lr=qg.FROM_LR_CHECK)
    grid = [*lr_check_grid(), main]
    # mean over the two tasks: 3e-3 -> 50, 1e-2 -> 55, 3e-2 -> 60 (the best on neither task alone wins)
    write_lr_check(results, {("sst2", 3e-3): 70, ("cola", 3e-3): 30, ("sst2", 1e-2): 80, ("cola", 1e-2): 30,
                             ("sst2", 3e-2): 75, ("cola", 3e-2): 45})  # fmt: skip
    assert qg.lr_check_means("smollm2", "superpos", grid, results) == {3e-3: 50.0, 1e-2: 55.0, 3e-2: 60.0}
    assert qg.resolve_lr(main, grid, results) == 3e-2
    harness = FakeHarness()
    qs.run_suite(grid, tmp_path / "runs", results, "data", only=[main.run_id], runner=harness)
    assert option(harness.commands[0], "--lr") == "0.03"

    write_lr_check(results, {("sst2", 3e-3): 60, ("cola", 3e-3): 50, ("sst2", 1e-2): 50, ("cola", 1e-2): 60,
                             ("sst2", 3e-2): 40, ("cola", 3e-2): 70})  # fmt: skip
    assert qg.resolve_lr(main, grid, results) == qg.PAPER_LR  # a tie goes to the paper's lr


def test_lr_check_missing_fails_loudly_and_the_grid_goes_on(tmp_path):
    results = tmp_path / "results"
    tuned = RunSpec(MAIN, "smollm2", "rte", "superpos", max_steps=100, lr=qg.FROM_LR_CHECK)
    other = RunSpec(MAIN, "smollm2", "rte", "lora", max_steps=100)
    grid = [*lr_check_grid(), tuned, other]
    for spec in lr_check_grid()[:5]:  # one lr-check run missing
        write_run(results / spec.run_id, {300: 50.0})
    with pytest.raises(qg.LrCheckError, match="smollm2/cola/lrcheck-superpos-lr0.03-s42"):
        qg.resolve_lr(tuned, grid, results)
    harness = FakeHarness()
    failed = qs.run_suite(grid, tmp_path / "runs", results, "data", only=["*/rte/*"], runner=harness)
    assert failed == [tuned.run_id]
    assert [option(c, "--method") for c in harness.commands] == ["lora"]
    failure = json.loads((results / "failures.jsonl").read_text())
    assert "lr check" in failure["reason"] and "missing" in failure["reason"]
    with pytest.raises(qg.LrCheckError, match="no lr-check runs"):
        qg.resolve_lr(tuned, [tuned], results)
