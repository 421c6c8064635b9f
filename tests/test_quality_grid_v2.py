"""Grid v2 (benchmarks/quality_grid_v2.py): settings chosen on the development split, sweeps extended past an edge
only when their best value lies there, and the harness command of each kind of run."""

from __future__ import annotations

from pathlib import Path

import pytest
from quality_results import write_first_steps, write_run

from benchmarks import quality_grid_v2 as v2
from benchmarks import quality_suite as qs
from benchmarks.quality_grid import CONFIRM, EXTEND, FROM_SWEEP, MATCHED, REGIME, RESEED, SWEEP, LrCheckError


def finish_sweep(results: Path, model: str, method: str, init: str | None, scores: dict[float, float]) -> None:
    for spec in v2.GRID_V2:
        if spec.stage in (SWEEP, EXTEND) and (spec.model, spec.method, spec.weight_init) == (model, method, init):
            if spec.lr in scores:
                write_run(results / spec.run_id, {100: scores[spec.lr] - 1, 400: scores[spec.lr]})


def spec_of(stage: str, model: str, task: str, method: str, **fields) -> v2.RunSpec:
    return next(
        spec
        for spec in v2.GRID_V2
        if (spec.stage, spec.model, spec.task, spec.method) == (stage, model, task, method)
        and all(getattr(spec, name) == value for name, value in fields.items())
    )


def test_every_run_of_grid_v2_has_its_own_folder_and_selection_runs_use_the_dev_split():
    assert len({spec.run_id for spec in v2.GRID_V2}) == len(v2.GRID_V2)
    for spec in v2.GRID_V2:
        assert spec.dev == (spec.stage in (SWEEP, EXTEND, RESEED))
        if spec.stage in (CONFIRM, REGIME):
            assert spec.max_eval_samples is None  # reported on every validation example


def test_tuned_settings_come_from_the_sweep(tmp_path):
    finish_sweep(tmp_path, "gemma3", "prompt_tuning", None, {3e-3: 60.0, 1e-2: 80.0, 3e-2: 70.0, 1e-1: 50.0})
    confirm = spec_of(CONFIRM, "gemma3", "sst2", "prompt_tuning", seed=7)
    assert v2.resolve_settings(confirm, v2.GRID_V2, tmp_path) == v2.Settings(1e-2, None)
    below, above = (spec_of(EXTEND, "gemma3", "sst2", "prompt_tuning", lr=lr) for lr in (1e-3, 3e-1))
    assert v2.resolve_settings(below, v2.GRID_V2, tmp_path) is None  # the best is inside the sweep
    assert v2.resolve_settings(above, v2.GRID_V2, tmp_path) is None


def test_a_best_value_at_an_edge_extends_the_sweep_and_the_extension_can_win(tmp_path):
    finish_sweep(tmp_path, "gemma3", "prompt_tuning", None, {3e-3: 50.0, 1e-2: 60.0, 3e-2: 70.0, 1e-1: 80.0})
    above = spec_of(EXTEND, "gemma3", "sst2", "prompt_tuning", lr=3e-1)
    assert v2.resolve_settings(above, v2.GRID_V2, tmp_path) == v2.Settings(3e-1, None)
    confirm = spec_of(CONFIRM, "gemma3", "sst2", "prompt_tuning", seed=42)
    assert v2.resolve_settings(confirm, v2.GRID_V2, tmp_path).lr == 1e-1  # until the extension has run
    finish_sweep(tmp_path, "gemma3", "prompt_tuning", None, {3e-1: 90.0})
    assert v2.resolve_settings(confirm, v2.GRID_V2, tmp_path).lr == 3e-1


def test_each_superpos_init_reruns_its_chosen_lr_at_the_second_seed_on_the_development_split(tmp_path):
    reseeds = [spec for spec in v2.GRID_V2 if spec.stage == RESEED]
    assert {(s.model, s.method, s.weight_init, s.seed) for s in reseeds} == {
        (model, "superpos", init, 7) for model in ("gemma3", "smollm2") for init in INITS
    }
    normal = spec_of(RESEED, "gemma3", "sst2", "superpos", weight_init="normal")
    confirm = spec_of(CONFIRM, "gemma3", "sst2", "superpos", weight_init="normal", seed=7)
    assert normal.run_id != confirm.run_id and normal.dev and not confirm.dev
    finish_sweep(tmp_path, "gemma3", "superpos", "normal", {1e-3: 60.0, 3e-3: 75.0, 1e-2: 70.0, 3e-2: 65.0})
    write_run(tmp_path / normal.run_id, {100: 90.0, 400: 90.0})  # the second seed does not move the choice
    assert v2.resolve_settings(normal, v2.GRID_V2, tmp_path) == v2.Settings(3e-3, "normal")
    assert v2.resolve_settings(confirm, v2.GRID_V2, tmp_path) == v2.Settings(3e-3, "normal")


INITS = ("normal", "one_hot")


def test_stage_b_trains_each_superpos_init_at_its_own_tuned_lr(tmp_path):
    normal, one_hot = (spec_of(REGIME, "gemma3", "cb", "superpos", seed=42, weight_init=init) for init in INITS)
    assert normal.lr == one_hot.lr == FROM_SWEEP and normal.run_id != one_hot.run_id
    with pytest.raises(LrCheckError, match="not finished"):
        v2.resolve_settings(normal, v2.GRID_V2, tmp_path)
    finish_sweep(tmp_path, "gemma3", "superpos", "normal", {1e-3: 60.0, 3e-3: 75.0, 1e-2: 70.0, 3e-2: 65.0})
    finish_sweep(tmp_path, "gemma3", "superpos", "one_hot", {3e-3: 70.0, 1e-2: 85.0, 3e-2: 80.0, 1e-1: 60.0})
    assert v2.resolve_settings(normal, v2.GRID_V2, tmp_path) == v2.Settings(3e-3, "normal")
    assert v2.resolve_settings(one_hot, v2.GRID_V2, tmp_path) == v2.Settings(1e-2, "one_hot")


def test_harness_commands_of_grid_v2(tmp_path):
    sweep = spec_of(SWEEP, "gemma3", "sst2", "superpos", weight_init="one_hot", lr=1e-2)
    command = qs.harness_command(sweep, tmp_path, "data", 1e-2, weight_init="one_hot")
    assert command[command.index("--dev-size") + 1] == str(v2.DEV_SIZE)
    assert command[command.index("--eval-split") + 1] == "dev" and "--max-eval-samples" not in command
    assert (
        command[command.index("--weight-init") + 1] == "one_hot" and command[command.index("--model") + 1] == "gemma3"
    )
    regime = spec_of(REGIME, "gemma3", "rte", "lora", seed=7)
    command = qs.harness_command(regime, tmp_path, "data", None)
    assert command[command.index("--max-train-samples") + 1] == "500"
    assert "--max-eval-samples" not in command and "--dev-size" not in command and "--lr" not in command


def test_stage_c_runs_each_variant_at_the_measured_step_of_the_tuned_setting(tmp_path):
    m16 = spec_of(MATCHED, "gemma3", "sst2", "superpos", seed=42, m=16)
    softmax = spec_of(MATCHED, "gemma3", "sst2", "superpos", seed=42, softmax=True)
    assert (m16.run_name, softmax.run_name) == ("superpos-m16-matched-s42", "superpos-softmax-matched-s42")
    finish_sweep(tmp_path, "gemma3", "superpos", "normal", {1e-3: 60.0, 3e-3: 85.0, 1e-2: 70.0, 3e-2: 65.0})
    finish_sweep(tmp_path, "gemma3", "superpos", "one_hot", {3e-3: 70.0, 1e-2: 75.0, 3e-2: 80.0, 1e-1: 60.0})
    with pytest.raises(LrCheckError, match="python -m benchmarks.prompt_steps --models gemma3"):
        v2.resolve_settings(m16, v2.GRID_V2, tmp_path)  # the steps are not measured yet
    write_first_steps(tmp_path, {("gemma3", "superpos", "normal", None, False): 40.0,
                                 ("gemma3", "superpos", "normal", 16, False): 20.0,
                                 ("gemma3", "superpos", "normal", None, True): 1.0,
                                 ("gemma3", "superpos", "one_hot", None, False): 30.0,
                                 ("gemma3", "superpos", "one_hot", 16, False): 5.0})  # fmt: skip
    # m=16 steps half as far per unit lr as m=128: twice the tuned lr gives the tuned step
    assert v2.resolve_settings(m16, v2.GRID_V2, tmp_path) == v2.Settings(pytest.approx(6e-3), "normal")
    assert v2.resolve_settings(softmax, v2.GRID_V2, tmp_path).lr == pytest.approx(3e-3 * 40)
    finish_sweep(tmp_path, "gemma3", "superpos", "one_hot", {3e-2: 90.0})  # one_hot's sweep is better now
    assert v2.resolve_settings(m16, v2.GRID_V2, tmp_path) == v2.Settings(pytest.approx(3e-2 * 6), "one_hot")
    with pytest.raises(LrCheckError, match="m=128, softmax=True"):  # one_hot softmax is not measured
        v2.resolve_settings(softmax, v2.GRID_V2, tmp_path)


def test_a_sweep_extends_a_second_step_while_its_best_stays_at_the_edge(tmp_path):
    finish_sweep(tmp_path, "gemma3", "superpos", "one_hot", {3e-3: 78.0, 1e-2: 55.0, 3e-2: 54.0, 1e-1: 52.0})
    first, second = (spec_of(EXTEND, "gemma3", "sst2", "superpos", weight_init="one_hot", lr=lr) for lr in (1e-3, 3e-4))
    assert v2.resolve_settings(first, v2.GRID_V2, tmp_path) == v2.Settings(1e-3, "one_hot")
    finish_sweep(tmp_path, "gemma3", "superpos", "one_hot", {1e-3: 80.0})  # the first extension wins: go on
    assert v2.resolve_settings(second, v2.GRID_V2, tmp_path) == v2.Settings(3e-4, "one_hot")
    assert v2.resolve_settings(first, v2.GRID_V2, tmp_path) is not None  # still needed once the second has run
    finish_sweep(tmp_path, "gemma3", "superpos", "one_hot", {3e-4: 70.0})
    assert v2.resolve_settings(first, v2.GRID_V2, tmp_path) is not None
    confirm = spec_of(CONFIRM, "gemma3", "sst2", "superpos", weight_init="one_hot", seed=42)
    assert v2.resolve_settings(confirm, v2.GRID_V2, tmp_path).lr == 1e-3
    above = spec_of(EXTEND, "gemma3", "sst2", "superpos", weight_init="one_hot", lr=1.0)
    assert v2.resolve_settings(above, v2.GRID_V2, tmp_path) is None  # the best is nowhere near the upper edge
