"""Saving, reloading (in fresh processes), exporting to stock prompt tuning, resuming training, and every way
loading must fail clearly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import finish_python, start_python
from peft import PeftModel
from safetensors.torch import load_file, save_file
from tiny_models import (
    ALL_FAMILIES,
    HIDDEN,
    VOCAB,
    default_task,
    labels_for,
    make_superpos,
    make_tiny,
    reference_outputs,
    tiny_batch,
)

import peft_superpos  # noqa: F401  (registers the method)
from peft_superpos import export_prompt_tuning

ADAPTER_FILE = "adapter_model.safetensors"


def encoder_of(peft_model):
    return peft_model.prompt_encoder["default"]


def training_batch(family, task):
    input_ids, attention_mask = tiny_batch(family)
    batch = {"input_ids": input_ids, "attention_mask": attention_mask}
    labels = labels_for(task, input_ids, attention_mask)
    if labels is not None:
        batch["labels"] = labels
    return batch


def loss_of(model, batch):
    output = model(**batch)
    if getattr(output, "loss", None) is not None:
        return output.loss
    return output.last_hidden_state.pow(2).mean()


def trained(family, task=None, steps=1, lr=0.05):
    """A SuperPos model on the tiny ``family`` base after ``steps`` AdamW steps (so ΔE and p' moved)."""
    task = task or default_task(family)
    model = make_superpos(family, task)
    model.train()
    batch = training_batch(family, task)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    for _ in range(steps):
        loss_of(model, batch).backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    assert encoder_of(model).delta.abs().sum() > 0
    return model


# -- fresh-process round trips, all architectures in two child processes ---------------------------------
RELOAD_SCRIPT = """
import sys
from pathlib import Path

import torch
from peft import PeftModel
from tiny_models import default_task, make_tiny, reference_outputs

import peft_superpos

root = Path({root!r})
for family in {families!r}:
    task = default_task(family)
    model = PeftModel.from_pretrained(make_tiny(family, task), root / family / "adapter")
    encoder = model.prompt_encoder["default"]
    assert type(encoder).__name__ == "SuperPosPromptEmbedding", type(encoder)
    assert model.peft_config["default"].inference_mode
    outputs = reference_outputs(model, family, task)
    outputs["delta"], outputs["weights"] = encoder.delta.detach(), encoder.weights.detach()
    outputs["token_ids"] = encoder.token_ids
    torch.save(outputs, root / family / "reloaded.pt")
    print("reloaded", family, flush=True)
"""

EXPORT_SCRIPT = """
import sys
from pathlib import Path

import torch
from peft import PeftModel, PeftType
from tiny_models import default_task, make_tiny, reference_outputs

root = Path({root!r})
for family in {families!r}:
    task = default_task(family)
    model = PeftModel.from_pretrained(make_tiny(family, task), root / family / "export")
    assert model.peft_config["default"].peft_type == PeftType.PROMPT_TUNING
    torch.save(reference_outputs(model, family, task), root / family / "exported.pt")
    print("exported", family, flush=True)
assert "peft_superpos" not in sys.modules, "the export must load without peft_superpos"
"""


class RoundTrips:
    """Adapters saved and exported by this process; two child processes reload them (started at once, awaited
    by the first test that needs their results)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.reference: dict[str, dict] = {}
        for family in ALL_FAMILIES:
            model = trained(family)
            model.save_pretrained(root / family / "adapter")
            export_prompt_tuning(model, root / family / "export")
            outputs = reference_outputs(model, family)
            encoder = encoder_of(model)
            outputs["delta"], outputs["weights"] = (
                encoder.delta.detach().clone(),
                encoder.weights.detach().clone(),
            )
            outputs["token_ids"] = encoder.token_ids.clone()
            self.reference[family] = outputs
        arguments = {"root": str(root), "families": list(ALL_FAMILIES)}
        self._processes = {
            "reload": start_python(RELOAD_SCRIPT.format(**arguments), root, "reload"),
            "export": start_python(EXPORT_SCRIPT.format(**arguments), root, "export"),
        }
        self._logs: dict[str, str] = {}

    def result(self, kind: str, family: str) -> dict:
        if kind not in self._logs:
            self._logs[kind] = finish_python(self._processes[kind])
        return torch.load(self.root / family / f"{'reloaded' if kind == 'reload' else 'exported'}.pt")

    def close(self) -> None:
        for process in self._processes.values():
            if process.poll() is None:
                process.kill()
                process.communicate()


@pytest.fixture(scope="module")
def round_trips(tmp_path_factory):
    trips = RoundTrips(tmp_path_factory.mktemp("round_trips"))
    yield trips
    trips.close()


def assert_same_outputs(actual: dict, expected: dict, keys=None):
    keys = [k for k in expected if k.startswith(("logits", "generated"))] if keys is None else keys
    assert keys
    for key in keys:
        assert actual[key].shape == expected[key].shape, key
        difference = diff(actual[key], expected[key])
        assert torch.equal(actual[key], expected[key]), f"{key} differs (max {difference})"


def diff(a, b):
    return (a.double() - b.double()).abs().max().item()


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_save_and_reload_in_fresh_process(round_trips, family):
    reference, reloaded = round_trips.reference[family], round_trips.result("reload", family)
    assert_same_outputs(reloaded, reference)
    for key in ("delta", "weights", "token_ids"):
        assert torch.equal(reloaded[key], reference[key]), key
    files = sorted(p.name for p in (round_trips.root / family / "adapter").iterdir())
    assert {"adapter_config.json", ADAPTER_FILE} <= set(files)
    saved = load_file(round_trips.root / family / "adapter" / ADAPTER_FILE)
    assert {"delta", "weights", "token_ids", "frozen_embeddings", "prompt_embeddings"} <= {
        key.rsplit(".", 1)[-1] for key in saved
    }


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_export_loads_with_plain_peft_in_fresh_process(round_trips, family):
    assert_same_outputs(round_trips.result("export", family), round_trips.reference[family])
    config = json.loads((round_trips.root / family / "export" / "adapter_config.json").read_text())
    assert config["peft_type"] == "PROMPT_TUNING" and config["num_virtual_tokens"] == 4
    tensors = load_file(round_trips.root / family / "export" / ADAPTER_FILE)
    assert tensors["prompt_embeddings"].shape == (4, HIDDEN)
    # besides the table, exactly what peft saved outside the prompt encoder (a SEQ_CLS head), unchanged
    saved = load_file(round_trips.root / family / "adapter" / ADAPTER_FILE)
    others = {key: value for key, value in saved.items() if key.startswith("base_model.")}
    assert bool(others) == (default_task(family) == "SEQ_CLS")
    assert set(tensors) == {"prompt_embeddings", *others}
    for key, value in others.items():
        assert torch.equal(tensors[key], value), key
    assert not [p for p in (round_trips.root / family / "export").iterdir() if p.name.startswith(".")]


def test_reloaded_adapter_saves_and_exports_the_same(tmp_path):
    """A loaded (inference-mode) adapter re-saves and exports the table and state it was loaded with."""
    model = trained("llama")
    model.save_pretrained(tmp_path / "first")
    export_prompt_tuning(model, tmp_path / "export_first")
    loaded = PeftModel.from_pretrained(make_tiny("llama"), tmp_path / "first")
    loaded.save_pretrained(tmp_path / "second")
    export_prompt_tuning(loaded, tmp_path / "export_second")
    for first, second in (("first", "second"), ("export_first", "export_second")):
        a, b = load_file(tmp_path / first / ADAPTER_FILE), load_file(tmp_path / second / ADAPTER_FILE)
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), (first, key)
    with pytest.raises(ValueError, match="not a peft_superpos prompt method"):
        stock = PeftModel.from_pretrained(make_tiny("llama"), tmp_path / "export_first")
        export_prompt_tuning(stock, tmp_path / "x")


# -- resuming training ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("family", "task"),
    [("gpt2", "CAUSAL_LM"), ("llama", "CAUSAL_LM"), ("t5", "SEQ_2_SEQ_LM"), ("bert", "SEQ_CLS")],
)
def test_resume_training_from_saved_adapter(family, task, tmp_path):
    batch = training_batch(family, task)

    def sgd_step(model):
        model.train()
        optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
        loss_of(model, batch).backward()
        optimizer.step()
        optimizer.zero_grad()

    original = make_superpos(family, task)
    sgd_step(original)
    original.save_pretrained(tmp_path)
    saved = {name: p.detach().clone() for name, p in original.named_parameters() if p.requires_grad}
    sgd_step(original)  # the original run goes on by one step

    resumed = PeftModel.from_pretrained(make_tiny(family, task), tmp_path, is_trainable=True)
    assert not resumed.peft_config["default"].inference_mode
    trainable = {name: p for name, p in resumed.named_parameters() if p.requires_grad}
    assert set(trainable) == set(saved)  # ΔE, p' (and a classification head) reload as trainable
    for name, parameter in trainable.items():
        assert torch.equal(parameter, saved[name]), name
    assert not encoder_of(resumed).frozen_embeddings.requires_grad

    sgd_step(resumed)  # one step after resuming == the original's next step
    continued = dict(original.named_parameters())
    for name, parameter in trainable.items():
        assert torch.equal(parameter, continued[name]), name  # same inputs, same ops: bit-exact
        assert not torch.equal(parameter, saved[name]), name


def test_load_adapter_trainable_as_second_adapter(tmp_path):
    trained("gpt2").save_pretrained(tmp_path)
    model = make_superpos("gpt2", base_seed=0, seed=3)
    model.load_adapter(tmp_path, adapter_name="resumed", is_trainable=True)
    model.set_adapter("resumed")
    encoder = model.prompt_encoder["resumed"]
    assert encoder.delta.requires_grad and encoder.weights.requires_grad
    assert not model.peft_config["resumed"].inference_mode
    model.train()
    loss_of(model, training_batch("gpt2", "CAUSAL_LM")).backward()
    assert encoder.delta.grad is not None and encoder.delta.grad.abs().sum() > 0


# -- loading onto other base models ----------------------------------------------------------------------
@pytest.mark.parametrize("family", ["llama", "t5", "bert"])
def test_load_onto_bf16_copy_of_the_base(family, tmp_path):
    model = trained(family)
    model.save_pretrained(tmp_path)
    expected = reference_outputs(model, family)
    bf16 = PeftModel.from_pretrained(make_tiny(family, dtype=torch.bfloat16), tmp_path)
    encoder = encoder_of(bf16)
    assert torch.equal(encoder.delta, encoder_of(model).delta)
    assert torch.equal(encoder.frozen_embeddings, encoder_of(model).frozen_embeddings)
    logits = reference_outputs(bf16, family)["logits_right"]
    assert logits.dtype == torch.bfloat16
    reference = expected["logits_right"]
    assert (logits.float() - reference).abs().max() <= 0.1 * reference.abs().max()


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
