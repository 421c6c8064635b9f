"""pytest set-up only: one thread, a seeded RNG per test, and the tiny harness models (saved once per session).
Helpers live in tiny_models.py (models, processes) and quality_results.py (quality-suite results); the repository
root and tests/ are on the import path through ``pythonpath`` in pyproject.toml."""

from __future__ import annotations

import pytest
import torch
from tiny_models import tiny_model_dir

torch.set_num_threads(1)  # tiny tensors gain nothing from threads, and the machine is shared


@pytest.fixture(autouse=True)
def _seeded():
    """Every test starts from the same global RNG state."""
    torch.manual_seed(1234)
    yield


def _tiny_model_fixture(family: str):
    """A session fixture: the folder of a tiny random ``family`` model with its tokenizer (saved once)."""

    @pytest.fixture(scope="session", name=family)
    def fixture(tmp_path_factory):
        return tiny_model_dir(tmp_path_factory, family)

    return fixture


llama, gpt2, t5, bert = (_tiny_model_fixture(family) for family in ("llama", "gpt2", "t5", "bert"))
