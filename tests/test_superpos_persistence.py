"""SuperPos-Prompt's own loading checks: an adapter loads only onto the base model it was made on, every way a
damaged adapter file fails clearly, and what the saved config records. Saving, fresh-process reloading, resuming and
exporting, which every method shares, are in test_methods_common.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel, PromptTuningConfig, get_peft_model
from safetensors.torch import load_file, save_file
from tiny_models import HIDDEN, VOCAB, loss_of, make_superpos, make_tiny, training_batch

from peft_superpos import export_prompt_tuning

ADAPTER_FILE = "adapter_model.safetensors"


def trained(family: str, steps: int = 1, lr: float = 0.05):
    """A CAUSAL_LM / main-task SuperPos model on the tiny ``family`` base after ``steps`` AdamW steps (so ΔE and
    p' moved)."""
    model = make_superpos(family)
    model.train()
    batch = training_batch(family, model.peft_config["default"].task_type)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    for _ in range(steps):
        loss_of(model, batch).backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    assert model.prompt_encoder["default"].delta.abs().sum() > 0
    return model


def test_export_refuses_an_adapter_that_is_not_ours(tmp_path):
    stock = get_peft_model(make_tiny("llama"), PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4))
    with pytest.raises(ValueError, match="not a peft_superpos prompt method"):
        export_prompt_tuning(stock, tmp_path / "x")


# -- loading onto other base models ----------------------------------------------------------------------
def test_load_onto_a_different_random_model_fails(tmp_path):
    trained("llama").save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="differ from the ones this adapter was trained on"):
        PeftModel.from_pretrained(make_tiny("llama", seed=1), tmp_path)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"hidden_size": 48}, rf"made for embeddings of size {HIDDEN}, but the model's are 48"),
        (
            {"vocab_size": VOCAB + 32},
            rf"made on an embedding table of {VOCAB} rows, but the model has {VOCAB + 32}",
        ),
    ],
    ids=["hidden_size", "vocab_size"],
)
@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_load_onto_a_model_of_another_shape_fails(family, overrides, match, tmp_path):
    trained(family).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=match):
        PeftModel.from_pretrained(make_tiny(family, **overrides), tmp_path)


# -- damaged adapter files -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def saved_gpt2(tmp_path_factory):
    path = tmp_path_factory.mktemp("saved_gpt2")
    trained("gpt2").save_pretrained(path)
    return path


def damaged_copy(source: Path, target: Path) -> Path:
    target.mkdir(parents=True, exist_ok=True)
    for file in source.iterdir():
        (target / file.name).write_bytes(file.read_bytes())
    return target


def test_truncated_adapter_file(saved_gpt2, tmp_path):
    path = damaged_copy(saved_gpt2, tmp_path / "truncated")
    data = (path / ADAPTER_FILE).read_bytes()
    (path / ADAPTER_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        PeftModel.from_pretrained(make_tiny("gpt2"), path)
    with pytest.raises(ValueError, match="truncated or corrupt"):
        PeftModel.from_pretrained(make_tiny("gpt2"), path, is_trainable=True)


def rewrite_tensors(path: Path, edit) -> None:
    tensors = load_file(path / ADAPTER_FILE)
    edit(tensors)
    save_file(tensors, path / ADAPTER_FILE, metadata={"format": "pt"})


def key_ending(tensors, suffix):
    return next(key for key in tensors if key.endswith(suffix))


@pytest.mark.parametrize("missing", ["delta", "weights", "frozen_embeddings", "prompt_embeddings"])
def test_missing_tensor_in_adapter_file(saved_gpt2, tmp_path, missing):
    path = damaged_copy(saved_gpt2, tmp_path / "missing")
    rewrite_tensors(path, lambda tensors: tensors.pop(key_ending(tensors, missing)))
    with pytest.raises(ValueError, match=rf"The adapter file lacks \['{missing}'\]"):
        PeftModel.from_pretrained(make_tiny("gpt2"), path)


def test_edited_table_or_token_ids_are_refused(saved_gpt2, tmp_path):
    path = damaged_copy(saved_gpt2, tmp_path / "table")

    def edit_table(tensors):
        key = key_ending(tensors, "prompt_embeddings")
        tensors[key] = tensors[key] + 1.0

    rewrite_tensors(path, edit_table)
    with pytest.raises(ValueError, match="saved prompt table does not match"):
        PeftModel.from_pretrained(make_tiny("gpt2"), path)

    path = damaged_copy(saved_gpt2, tmp_path / "ids")
    config = json.loads((path / "adapter_config.json").read_text())
    config["token_ids"] = sorted(set(range(3, 3 + len(config["token_ids"]) + 1)) - {config["token_ids"][0]})[
        : len(config["token_ids"])
    ]
    (path / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="token_ids in the adapter weights differ"):
        PeftModel.from_pretrained(make_tiny("gpt2"), path)


def test_saved_config_records_the_sampling(saved_gpt2):
    config = json.loads((saved_gpt2 / "adapter_config.json").read_text())
    assert config["peft_type"] == "SUPERPOS_PROMPT"
    assert config["base_vocab_size"] == VOCAB and config["token_dim"] == HIDDEN
    tensors = load_file(saved_gpt2 / ADAPTER_FILE)
    assert config["token_ids"] == tensors[key_ending(tensors, "token_ids")].tolist()
