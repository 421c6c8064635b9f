"""kill -9 a CLI run after its first checkpoint, start the same command again: it finishes at max_steps with
the same metrics as an uninterrupted run, and every row logged before the kill is still in metrics.jsonl."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from tiny_models import REPO_ROOT, cli_args, read_jsonl, run_cli, subprocess_env, tiny_model_dir

from peft_superpos.harness import read_rows

STEPS = ("--max-steps", "12", "--eval-steps", "2", "--save-steps", "4")


def test_kill_and_resume_matches_an_uninterrupted_run(tmp_path_factory, tmp_path):
    model = tiny_model_dir(tmp_path_factory, "llama")
    run_cli(cli_args(model, tmp_path / "whole", "cb", *STEPS))

    args = cli_args(model, tmp_path / "killed", "cb", *STEPS)
    process = subprocess.Popen(
        [sys.executable, "-m", "peft_superpos.train", *args],
        env=subprocess_env(),
        cwd=str(REPO_ROOT),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    marker = tmp_path / "killed" / "checkpoint-4" / "trainer_state.json"
    deadline = time.time() + 180
    while not marker.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    if process.poll() is not None:
        pytest.fail(f"the run ended (rc {process.returncode}) before it could be killed")
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    before = read_jsonl(tmp_path / "killed" / "metrics.jsonl")
    assert before and not (tmp_path / "killed" / "final.json").exists()

    run_cli(args)
    raw = read_jsonl(tmp_path / "killed" / "metrics.jsonl")
    assert raw[: len(before)] == before  # rows logged before the kill survive, untouched
    final = json.loads((tmp_path / "killed" / "final.json").read_text())
    assert final["global_step"] == 12 and final["session"] == 1 and final["resumed_from"]
    whole = read_rows(tmp_path / "whole" / "metrics.jsonl")
    resumed = read_rows(tmp_path / "killed" / "metrics.jsonl")
    assert [r["step"] for r in resumed] == list(range(2, 13, 2)) == [r["step"] for r in whole]
    for a, b in zip(whole, resumed, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4), (a, b)
        assert a["eval_score"] == pytest.approx(b["eval_score"]), (a, b)
    final_whole = json.loads((tmp_path / "whole" / "final.json").read_text())
    assert final["final_train_loss"] == pytest.approx(final_whole["final_train_loss"], rel=1e-4)
