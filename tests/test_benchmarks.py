"""The benchmark scripts keep running (a smoke run on a tiny model; no timing is asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_overhead_script_runs_on_a_tiny_model(tmp_path):
    command = [sys.executable, str(ROOT / "benchmarks" / "overhead.py"), "--model", "tiny", "--rounds", "1"]
    command += ["--warmup", "0", "--only", "superpos m=16", "--output", str(tmp_path)]
    subprocess.run(command, check=True, capture_output=True, text=True, cwd=ROOT)
    results = json.loads((tmp_path / "overhead-tiny.json").read_text())
    assert set(results["variants"]) == {"prompt_tuning", "superpos m=16"}
    superpos = results["variants"]["superpos m=16"]
    assert superpos["trainable_parameters"] == 10 * 16 * 64 + 10 * 16
    assert superpos["train_step_s"]["median"] > 0 and superpos["adapter_only_s"] > 0
    assert (tmp_path / "overhead-tiny.md").read_text().count("| superpos m=16 |") == 1
