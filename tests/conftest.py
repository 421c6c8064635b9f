"""pytest set-up only: the import path, one thread, a seeded RNG per test, and the tiny harness models (saved
once per session). Helpers live in tiny_models.py."""

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


@pytest.fixture(scope="session")
def llama(tmp_path_factory):
    from tiny_models import tiny_model_dir

    return tiny_model_dir(tmp_path_factory, "llama")


@pytest.fixture(scope="session")
def gpt2(tmp_path_factory):
    from tiny_models import tiny_model_dir

    return tiny_model_dir(tmp_path_factory, "gpt2")


@pytest.fixture(scope="session")
def t5(tmp_path_factory):
    from tiny_models import tiny_model_dir

    return tiny_model_dir(tmp_path_factory, "t5")


@pytest.fixture(scope="session")
def bert(tmp_path_factory):
    from tiny_models import tiny_model_dir

    return tiny_model_dir(tmp_path_factory, "bert")
