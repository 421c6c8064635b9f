"""The run folder never loses or mixes work: one process at a time (a killed holder's lock is taken over), a
run stopped after its last checkpoint is finished without training, the train loss after a resume covers the
same steps as without the stop, restarts with other data/eval settings or into an unknown run's folder are
refused, and --overwrite-output-dir deletes only what the harness wrote."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys

import pytest
from tiny_models import FIXTURE_DATA, REPO_ROOT, harness_config, read_jsonl, subprocess_env

from peft_superpos.harness import read_rows, run_experiment
from peft_superpos.harness.errors import RunFolderError


def _config(model, output_dir, **overrides):
    return harness_config(model, output_dir, **{"max_eval_samples": 8, "eval_mode": "rank", **overrides})


_HOLD = """
import sys, time
from pathlib import Path
from peft_superpos.harness.run_folder import locked_run_folder
with locked_run_folder(Path(sys.argv[1])):
    print("locked", flush=True)
    time.sleep(600)
"""


def test_second_process_is_refused_and_a_killed_holder_is_taken_over(llama, tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(tmp_path)],
        env=subprocess_env(),
        cwd=str(REPO_ROOT),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunFolderError) as refused:
            run_experiment(_config(llama, tmp_path))
        message = str(refused.value)
        assert str(tmp_path) in message and f"pid {holder.pid}" in message and socket.gethostname() in message
        assert not (tmp_path / "run_config.json").exists()  # the refused run touched nothing
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    stale = json.loads((tmp_path / ".run.lock.holder.json").read_text())
    assert stale["pid"] == holder.pid  # the killed process left its record behind
    final = run_experiment(_config(llama, tmp_path))  # the OS released the lock: taken over
    assert final["global_step"] == 2 and not (tmp_path / ".run.lock.holder.json").exists()


def test_stopped_after_the_last_checkpoint_trains_nothing(llama, tmp_path):
    first = run_experiment(_config(llama, tmp_path, max_steps=4))
    rows = (tmp_path / "metrics.jsonl").read_text()
    (tmp_path / "final.json").unlink()  # killed between the last checkpoint and final.json
    again = run_experiment(_config(llama, tmp_path, max_steps=4))
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    assert (tmp_path / "metrics.jsonl").read_text() == rows  # no step 5, no new row
    assert again["global_step"] == 4 and again["final_train_loss"] == first["final_train_loss"]
    assert again["final"] == first["final"] and again["best"] == first["best"]
    assert json.loads((tmp_path / "final.json").read_text())["global_step"] == 4


def _cut_after(folder, step):
    """Make ``folder`` look like a run killed right after writing checkpoint-<step>."""
    (folder / "final.json").unlink()
    for checkpoint in folder.glob("checkpoint-*"):
        if int(checkpoint.name.split("-")[1]) > step:
            shutil.rmtree(checkpoint)


def test_train_loss_after_a_resume_covers_the_whole_window(llama, tmp_path):
    steps = dict(max_steps=8, eval_steps=4, save_steps=3, save_total_limit=None)
    run_experiment(_config(llama, tmp_path / "whole", **steps))
    whole = {r["step"]: r["train_loss"] for r in read_rows(tmp_path / "whole" / "metrics.jsonl")}
    assert sorted(whole) == [4, 8]

    # Killed after checkpoint-6 (steps 5-6 trained, not yet logged), before the row at step 8.
    shutil.copytree(tmp_path / "whole", tmp_path / "killed")
    _cut_after(tmp_path / "killed", 6)
    rows = read_jsonl(tmp_path / "killed" / "metrics.jsonl")
    (tmp_path / "killed" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows if r["step"] <= 6))
    final = run_experiment(_config(llama, tmp_path / "killed", **steps))
    assert final["resumed_from"].endswith("checkpoint-6")
    assert final["final"]["train_loss"] == pytest.approx(whole[8], rel=1e-6)  # steps 5-8, not 7-8
    assert "train_loss_partial" not in final["final"]

    # A checkpoint of an older version has no loss window: the row is marked partial and never replaces the
    # complete row logged before the kill (killed after the evaluation at step 8, before checkpoint-8).
    shutil.copytree(tmp_path / "whole", tmp_path / "old")
    _cut_after(tmp_path / "old", 6)
    (tmp_path / "old" / "checkpoint-6" / "loss_window.json").unlink()
    final = run_experiment(_config(llama, tmp_path / "old", **steps))
    assert final["final"]["train_loss"] == pytest.approx(whole[8], rel=1e-6) and final["final"]["session"] == 0
    [partial] = final["superseded_rows"]
    assert partial["step"] == 8 and partial["train_loss_partial"] is True and partial["session"] == 1


@pytest.mark.parametrize(
    ("changed", "value"),
    [("max_eval_samples", 4), ("eval_mode", "generate"), ("eval_split", "train"), ("data_dir", "copy")],
)
def test_restart_with_other_data_or_evaluation_is_refused(changed, value, llama, tmp_path):
    run_experiment(_config(llama, tmp_path / "run"))
    if value == "copy":
        value = str(shutil.copytree(FIXTURE_DATA, tmp_path / "data"))
    with pytest.raises(RunFolderError, match=f"different run .*{changed}"):
        run_experiment(_config(llama, tmp_path / "run", max_steps=4, **{changed: value}))


def test_unknown_runs_folder_is_refused_and_overwrite_deletes_only_harness_files(llama, tmp_path):
    run_experiment(_config(llama, tmp_path, method="lora"))
    (tmp_path / "run_config.json").unlink()
    with pytest.raises(RunFolderError, match="no run_config.json"):
        run_experiment(_config(llama, tmp_path, method="superpos"))
    (tmp_path / "checkpoint-best").mkdir()
    (tmp_path / "checkpoint-best" / "adapter_model.safetensors").write_bytes(b"mine")
    (tmp_path / "notes.txt").write_text("mine")
    final = run_experiment(_config(llama, tmp_path, method="superpos", overwrite_output_dir=True))
    assert final["method"] == "superpos" and final["session"] == 0
    assert (tmp_path / "checkpoint-best" / "adapter_model.safetensors").read_bytes() == b"mine"
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert json.loads((tmp_path / "run_config.json").read_text())["method"] == "superpos"
