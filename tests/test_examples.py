"""Every script in examples/ runs on a tiny local model (subprocess, offline)."""

from __future__ import annotations

import subprocess
import sys

from tiny_models import FIXTURE_DATA, REPO_ROOT, subprocess_env, tiny_model_dir


def _run(script: str, *args: str) -> str:
    process = subprocess.run(
        [sys.executable, str(REPO_ROOT / "examples" / script), *args],
        env=subprocess_env(),
        cwd=str(REPO_ROOT),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert process.returncode == 0, process.stdout[-2000:] + process.stderr[-6000:]
    return process.stdout


def test_quickstart(tmp_path_factory):
    out = _run("quickstart.py", "--model", str(tiny_model_dir(tmp_path_factory, "llama")))
    assert "reloaded adapter gives the same logits: True" in out


def test_trainer_finetune(tmp_path_factory, tmp_path):
    model = tiny_model_dir(tmp_path_factory, "llama")
    out = _run("trainer_finetune.py", "--model", str(model), "--max-steps", "2", "--output-dir", str(tmp_path))
    assert "final train loss" in out and (tmp_path / "adapter" / "adapter_config.json").is_file()


def test_paper_recipe(tmp_path_factory, tmp_path):
    model = tiny_model_dir(tmp_path_factory, "t5")
    out = _run(
        "paper_recipe.py",
        "--model",
        str(model),
        "--task",
        "rte",
        "--data-dir",
        str(FIXTURE_DATA),
        "--output-dir",
        str(tmp_path / "run"),
        "--max-steps",
        "2",
        "--eval-steps",
        "2",
        "--batch-size",
        "2",
    )
    assert '"best"' in out and (tmp_path / "run" / "final.json").is_file()
