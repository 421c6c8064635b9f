"""The benchmark scripts keep running (a smoke run on a tiny model; no timing is asserted), and RESULTS.md and the
quality report are what the scripts generate from the committed result files."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_models import FIXTURE_DATA, save_tiny_model

from benchmarks import make_results, model_cost, quality_grid, quality_report
from benchmarks.quality_render import report_markdown

ROOT = Path(__file__).resolve().parents[1]


def test_overhead_script_runs_on_a_tiny_model(tmp_path):
    command = [sys.executable, "-m", "benchmarks.overhead", "--model", "tiny", "--rounds", "1"]
    command += ["--warmup", "0", "--only", "superpos m=16", "--output", str(tmp_path)]
    subprocess.run(command, check=True, capture_output=True, text=True, cwd=ROOT)
    results = json.loads((tmp_path / "overhead-tiny.json").read_text())
    assert set(results["variants"]) == {"prompt_tuning", "superpos m=16"}
    superpos = results["variants"]["superpos m=16"]
    assert superpos["trainable_parameters"] == 10 * 16 * 64 + 10 * 16
    assert superpos["train_step_s"]["median"] > 0 and superpos["adapter_only_s"] > 0
    assert (tmp_path / "overhead-tiny.md").read_text().count("| superpos m=16 |") == 1


def test_results_md_is_what_make_results_generates():
    assert (ROOT / "benchmarks" / "RESULTS.md").read_text() == make_results.render(), (
        "benchmarks/RESULTS.md is out of date: edit benchmarks/RESULTS.template.md and run "
        "python -m benchmarks.make_results"
    )


def to_rounding(value):
    """``value`` (JSON data) with every float to 12 significant digits: scipy and numpy releases differ in the
    last bits of the statistics (STS-B correlations), not in what the report says."""
    if isinstance(value, float):
        return float(f"{value:.12g}")
    if isinstance(value, dict):
        return {key: to_rounding(item) for key, item in value.items()}
    if isinstance(value, list):
        return [to_rounding(item) for item in value]
    return value


def test_committed_quality_report_is_built_from_the_committed_results():
    folder = quality_grid.DEFAULT_RESULTS_DIR
    report = quality_report.build_report(quality_grid.GRID_V1, folder)
    committed = to_rounding(json.loads((folder / "report.json").read_text()))
    assert committed == to_rounding(json.loads(json.dumps(report))), (
        "benchmarks/results/quality/report.json is out of date: run python -m benchmarks.quality_suite report"
    )
    assert (folder / "report.md").read_text() == report_markdown(report["tables"])


def test_generated_tables_come_from_the_result_files(tmp_path):
    (tmp_path / "quality").mkdir()
    (tmp_path / "overhead-tiny.md").write_text("`python -m benchmarks.overhead`\n\n| a |\n|---|\n| 1 |\n")
    (tmp_path / "quality" / "report.json").write_text(json.dumps({"tables": {"status": "3 of 4 finished"}}))
    template = tmp_path / "template.md"
    template.write_text("# R\n<!-- generated: overhead:tiny -->\ntext\n<!-- generated: quality:status -->\n")
    assert (
        make_results.render(template, tmp_path)
        == make_results.HEADER + "# R\n| a |\n|---|\n| 1 |\ntext\n3 of 4 finished\n"
    )
    template.write_text("<!-- generated: quality:nope -->\n")
    with pytest.raises(KeyError, match="no table 'nope'"):
        make_results.render(template, tmp_path)


def test_padding_script_runs_on_a_tiny_model(tmp_path):
    model = save_tiny_model("llama", tmp_path / "llama")
    command = [sys.executable, "-m", "benchmarks.padding", "--model", str(model), "--tasks", "cb"]
    command += ["--data-dir", str(FIXTURE_DATA), "--batch-size", "2", "--steps", "1", "--output", str(tmp_path)]
    subprocess.run(command, check=True, capture_output=True, text=True, cwd=ROOT)
    (result,) = json.loads((tmp_path / "padding-llama.json").read_text())["results"]
    assert result["task"] == "cb" and result["grouped_padding_fraction"] <= result["random_padding_fraction"]
    assert result["random_s_per_step"] > 0 and result["grouped_tokens_per_s"] > 0
    assert (tmp_path / "padding-llama.md").read_text().count("| cb |") == 1


def test_model_cost_times_every_phase_with_the_positions_and_with_the_int_keep(tmp_path):
    model = save_tiny_model("llama", tmp_path / "llama")
    args = argparse.Namespace(
        model=str(model), data_dir=str(FIXTURE_DATA), batch_size=2, steps=1, eval_examples=4, seed=42
    )
    assert {"train" + model_cost.INT_KEEP, "generate" + model_cost.INT_KEEP} < set(model_cost.PHASES)
    for phase in model_cost.PHASES[1:]:  # after "load", which runs nothing
        result = model_cost.measure("cb", phase, args)
        assert result["phase"] == phase and result["tokens"] > 0 and result["seconds"] > 0


def test_prompt_steps_measures_superpos_delta_path_as_its_closed_form(llama):
    """Through ΔE alone, AdamW's first step moves prompt i by lr · Σ_j |p'_ij| per coordinate, exactly (one_hot:
    lr); a free prompt table moves by lr; the p' path adds to it."""
    from dataclasses import replace

    from benchmarks import prompt_steps
    from benchmarks.first_steps import PromptSetting
    from peft_superpos.harness import MethodSettings, RunConfig
    from peft_superpos.harness.run_model import build_adapter, load_base_model
    from peft_superpos.optim import embedding_rms

    config = RunConfig(task="sst2", output_dir="unused", data_dir=str(FIXTURE_DATA), model=str(llama),
                       method_settings=MethodSettings(), seed=0)  # fmt: skip
    base = load_base_model(config)
    batches = prompt_steps.training_batches(config, base.tokenizer, 2, 2, seed=0)
    rms = embedding_rms(base.model.get_input_embeddings())
    lrs = (1e-3, 1e-2)
    for init in ("one_hot", "normal"):
        settings = prompt_steps.method_settings(PromptSetting("superpos", init, 16))
        model = build_adapter(replace(config, method="superpos", method_settings=settings), base)
        encoder = model.model.prompt_encoder["default"]
        l1 = encoder.weights.detach().abs().sum(dim=-1)  # (n,)
        for row, lr in zip(prompt_steps.measure_setting(model.model, batches, lrs, rms), lrs, strict=True):
            assert row["lr"] == lr
            assert row["delta"] == pytest.approx(lr * float(l1.pow(2).mean().sqrt()) / rms, rel=1e-3)
            assert row["weights"] > 0 and row["all"] > max(row["delta"], row["weights"])
    table = build_adapter(replace(config, method="prompt_tuning", method_settings=MethodSettings(lr=1e-3)), base)
    (row,) = prompt_steps.measure_setting(table.model, batches, (1e-3,), rms)
    assert row["all"] == pytest.approx(1e-3 / rms, rel=1e-3) and "delta" not in row


def test_first_steps_interpolate_on_log_axes_within_what_was_measured(tmp_path):
    from benchmarks.first_steps import FILE_NAME, FirstSteps, PromptSetting

    row = {"model": "gemma3", "method": "superpos", "weight_init": "normal", "m": 16, "softmax": False}
    rows = [{**row, "lr": lr, "all": 40 * lr} for lr in (1e-3, 1e-2)] + [{**row, "lr": 1e-1, "all": 40 * 1e-1 * 10}]
    (tmp_path / FILE_NAME).write_text(json.dumps({"command": "", "results": rows}))
    steps = FirstSteps.load(tmp_path)
    setting = PromptSetting("superpos", "normal", 16)
    assert steps.step("gemma3", setting, 3e-3) == pytest.approx(40 * 3e-3)  # a power law stays one between points
    assert steps.lr_for("gemma3", setting, 40 * 3e-3) == pytest.approx(3e-3)
    assert steps.step("gemma3", setting, 1e-1) == pytest.approx(40.0)
    assert steps.step("gemma3", setting, 1.0) is None and steps.lr_for("gemma3", setting, 1e-3) is None
    assert steps.step("smollm2", setting, 3e-3) is None
    assert steps.step("gemma3", PromptSetting("superpos"), 3e-3) is None
    assert FirstSteps.load(tmp_path / "none").step("gemma3", setting, 3e-3) is None
