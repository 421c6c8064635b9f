"""Shared test setup: import path, determinism, and helpers to run code in a fresh Python process."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
TESTS_DIR = Path(__file__).resolve().parent
for path in (str(REPO_ROOT), str(TESTS_DIR)):
    if path not in sys.path:
        sys.path.insert(0, path)

torch.set_num_threads(1)  # tiny tensors gain nothing from threads, and the machine is shared


def subprocess_env() -> dict[str, str]:
    """Environment for a child Python: the repo and tests on the path, offline, quiet, same thread count."""
    env = dict(os.environ)
    paths = [str(REPO_ROOT), str(TESTS_DIR), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(path for path in paths if path)
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        TRANSFORMERS_VERBOSITY="error",
        TOKENIZERS_PARALLELISM="false",
        OMP_NUM_THREADS=str(torch.get_num_threads()),
    )
    return env


def start_python(script: str, tmp_path: Path, name: str) -> subprocess.Popen:
    """Start ``script`` in a fresh interpreter (non-blocking); finish it with ``finish_python``."""
    path = tmp_path / f"{name}.py"
    path.write_text(textwrap.dedent(script))
    return subprocess.Popen(
        [sys.executable, str(path)],
        cwd=str(tmp_path),
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish_python(process: subprocess.Popen, timeout: float = 240) -> str:
    """Wait for a process from ``start_python``; fail the test with its output when it did not exit 0."""
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        stdout, stderr = process.communicate()
        pytest.fail(f"subprocess timed out\nstdout:\n{stdout}\nstderr:\n{stderr[-4000:]}")
    if process.returncode != 0:
        pytest.fail(f"subprocess exited {process.returncode}\nstdout:\n{stdout}\nstderr:\n{stderr[-6000:]}")
    return stdout


@pytest.fixture(autouse=True)
def _seeded():
    """Every test starts from the same global RNG state."""
    torch.manual_seed(1234)
    yield
