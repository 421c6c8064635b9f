"""Shared test setup: import path, determinism, and helpers to run code in a fresh Python process."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


RELOAD_SCRIPT = """
import torch
import peft_superpos
from peft import PeftModel
from tiny_models import batch_logits, make_tiny
for family, task, folder in {cases!r}:
    model = PeftModel.from_pretrained(make_tiny(family, task), folder).eval()
    torch.save(batch_logits(model, family, task), folder + "/child_logits.pt")
"""


@dataclass
class FreshReload:
    """Adapters saved by this process that a fresh process is reloading (from ``fresh_reload``)."""

    cases: list[tuple[str, str, str]]  # (family, task, folder)
    models: dict[str, Any]  # folder -> the saved peft model
    logits: dict[str, torch.Tensor]  # folder -> its logits here, on tiny_models.batch_logits
    child: subprocess.Popen

    def resumed(self) -> Iterator[tuple[str, Any, dict, dict]]:
        """Reload each adapter here as trainable (while the child runs) and yield ``(family, resumed model, saved
        parameters, loaded parameters)`` for the caller's own checks; then check that the loaded parameters
        equal the saved ones and are trainable, and that a training step gives every one a gradient."""
        from peft import PeftModel
        from tiny_models import make_tiny, tiny_batch

        for family, task, folder in self.cases:
            resumed = PeftModel.from_pretrained(make_tiny(family, task), folder, is_trainable=True)
            saved = dict(self.models[folder].prompt_encoder["default"].named_parameters())
            loaded = dict(resumed.prompt_encoder["default"].named_parameters())
            yield family, resumed, saved, loaded
            assert all(torch.equal(saved[k], loaded[k]) and loaded[k].requires_grad for k in saved)
            input_ids, mask = tiny_batch(family, length=6)
            resumed.train()
            resumed(input_ids=input_ids, attention_mask=mask, labels=input_ids).loss.backward()
            assert all(p.grad is not None for p in loaded.values())

    def check_child(self) -> None:
        """Wait for the fresh process: its logits must equal those of this process exactly."""
        finish_python(self.child)
        for folder, logits in self.logits.items():
            assert torch.equal(torch.load(folder + "/child_logits.pt"), logits)


@contextlib.contextmanager
def fresh_reload(build: Callable[[str, str], Any], pairs, tmp_path: Path, name: str) -> Iterator[FreshReload]:
    """Save the peft model ``build(family, task)`` of each ``(family, task)`` in ``pairs`` under
    ``tmp_path/family`` and start reloading them all in a fresh process at once (script ``name``), so that its
    start-up overlaps other tests; the child is killed on exit if still running."""
    from tiny_models import batch_logits

    cases, models, logits = [], {}, {}
    for family, task in pairs:
        model = build(family, task)
        model.eval()
        folder = str(tmp_path / family)
        model.save_pretrained(folder)
        logits[folder] = batch_logits(model, family, task)
        cases.append((family, task, folder))
        models[folder] = model
    child = start_python(RELOAD_SCRIPT.format(cases=cases), tmp_path, name)
    try:
        yield FreshReload(cases, models, logits, child)
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()


@pytest.fixture(autouse=True)
def _seeded():
    """Every test starts from the same global RNG state."""
    torch.manual_seed(1234)
    yield
