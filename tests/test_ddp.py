"""2-process DDP on CPU (gloo) agrees with 1 process at the same global batch size.

accelerate 1.15 runs ``accelerate launch --cpu --num_processes 2`` as ONE process unless MPI is set up
(``--mpirun_hostfile``); ``--multi_gpu`` (torchrun under the hood) starts 2 processes, which use gloo on a
machine without GPUs. ``torchrun --nproc_per_node 2 -m peft_superpos.train`` works the same.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from tiny_models import REPO_ROOT, cli_args, run_cli, subprocess_env, tiny_model_dir

# Global batch 6 = the whole CB fixture: every step sees the same examples whatever the sharding.
ARGS = ("--batch-size", "6", "--max-steps", "3", "--eval-steps", "3", "--eval-mode", "rank")


@pytest.mark.skipif(shutil.which("accelerate") is None, reason="accelerate CLI not installed")
def test_two_process_ddp_matches_one_process(tmp_path_factory, tmp_path):
    model = tiny_model_dir(tmp_path_factory, "llama")
    run_cli(cli_args(model, tmp_path / "single", "cb", *ARGS))
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--multi_gpu",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "-m",
        "peft_superpos.train",
        *cli_args(model, tmp_path / "ddp", "cb", *ARGS),
    ]
    process = subprocess.run(
        command, env=subprocess_env(), cwd=str(REPO_ROOT), capture_output=True, text=True, timeout=300
    )
    assert process.returncode == 0, process.stderr[-6000:]
    single = json.loads((tmp_path / "single" / "final.json").read_text())
    ddp = json.loads((tmp_path / "ddp" / "final.json").read_text())
    assert single["world_size"] == 1 and ddp["world_size"] == 2
    assert ddp["final_train_loss"] == pytest.approx(single["final_train_loss"], rel=1e-5)
    assert ddp["final"]["eval_score"] == pytest.approx(single["final"]["eval_score"])
    left = load_file(tmp_path / "single" / "checkpoint-3" / "adapter_model.safetensors")
    right = load_file(tmp_path / "ddp" / "checkpoint-3" / "adapter_model.safetensors")
    assert left.keys() == right.keys()
    for key in left:
        torch.testing.assert_close(left[key], right[key], rtol=1e-4, atol=1e-6)
