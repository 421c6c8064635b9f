"""pytest set-up only: the import path, one thread, and a seeded RNG per test. Helpers live in tiny_models.py."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

for path in (Path(__file__).resolve().parents[1], Path(__file__).resolve().parent):  # the repo, then tests/
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

torch.set_num_threads(1)  # tiny tensors gain nothing from threads, and the machine is shared


@pytest.fixture(autouse=True)
def _seeded():
    """Every test starts from the same global RNG state."""
    torch.manual_seed(1234)
    yield
