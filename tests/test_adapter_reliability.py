"""Reliability of the adapters (issue 8, items 7-13): the prompt table is never stale and what is saved always
loads; export never overwrites; any float precision of the same base model loads; an inference-loaded adapter
can be trained; encoder-decoder generate matches stock peft and ``disable_adapter``; bad configs and damaged
adapter folders give clear errors."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from tiny_models import labels_for, make_tiny, tiny_batch
from transformers import GenerationConfig

from peft_superpos import DePTConfig, ResidualPromptConfig, SuperPosPromptConfig, WeightInit, export_prompt_tuning

ADAPTER_FILE = "adapter_model.safetensors"
PICKLE_FILE = "adapter_model.bin"
CONFIG_FILE = "adapter_config.json"
SMALL = {
    "superpos": (SuperPosPromptConfig, {"num_virtual_tokens": 4, "m": 16}),
    "residual": (ResidualPromptConfig, {"num_virtual_tokens": 4, "bottleneck_size": 8}),
    "dept": (DePTConfig, {"num_virtual_tokens": 3, "r": 2, "max_length": 16}),
}
METHODS = tuple(SMALL)


def perturb(encoder, seed: int = 7, scale: float = 0.05) -> None:
    """Move every parameter off its init, as training would (ΔE and DePT's B start at zero)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in encoder.parameters():
            parameter.add_(scale * torch.randn(parameter.shape, generator=generator).to(parameter.dtype))


def make_method(method: str, family: str, task: str, base=None, **overrides):
    """A tiny ``family`` model with a small adapter of ``method`` whose parameters are off their init."""
    config_cls, small = SMALL[method]
    base = make_tiny(family, task) if base is None else base
    model = get_peft_model(base, config_cls(task_type=task, **{**small, **overrides}))
    perturb(model.prompt_encoder["default"])
    return model


def inputs_for(task: str, family: str, with_labels: bool = False) -> dict[str, torch.Tensor]:
    input_ids, attention_mask = tiny_batch(family, length=6)
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
    if task == "SEQ_2_SEQ_LM":
        inputs["decoder_input_ids"] = input_ids[:, :3]
    if with_labels:
        inputs["labels"] = labels_for(task, input_ids[:, :3] if task == "SEQ_2_SEQ_LM" else input_ids, None)
        if task == "SEQ_2_SEQ_LM":
            inputs.pop("decoder_input_ids")
    return inputs


def logits_of(model, task: str, family: str) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs_for(task, family)).logits


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir()) if path.is_file()}


# -- 7. the prompt table is never stale ----------------------------------------------------------------------
@pytest.mark.parametrize("inference_loaded", [False, True], ids=["created", "loaded"])
@pytest.mark.parametrize("method", METHODS)
def test_in_place_edits_reach_the_prompt_and_the_saved_file_loads(method, inference_loaded, tmp_path):
    model = make_method(method, "llama", "CAUSAL_LM").eval()
    if inference_loaded:
        model.save_pretrained(tmp_path / "first")
        model = PeftModel.from_pretrained(make_tiny("llama", "CAUSAL_LM"), tmp_path / "first").eval()
    encoder = model.prompt_encoder["default"]
    before = logits_of(model, "CAUSAL_LM", "llama")
    with torch.no_grad():  # evaluation: no autograd
        prompt_before = model.get_prompt(batch_size=1)
        next(encoder.parameters()).data.mul_(2)  # bumps no version counter
        prompt_after = model.get_prompt(batch_size=1)
        assert torch.equal(prompt_after, encoder.table()[None])
    assert not torch.equal(prompt_after, prompt_before)
    after = logits_of(model, "CAUSAL_LM", "llama")
    assert not torch.equal(after, before)
    model.save_pretrained(tmp_path / "edited")
    reloaded = PeftModel.from_pretrained(make_tiny("llama", "CAUSAL_LM"), tmp_path / "edited").eval()
    assert torch.equal(logits_of(reloaded, "CAUSAL_LM", "llama"), after)


def optimizer_step(model, encoder) -> None:
    model.train()
    output = model(**inputs_for("CAUSAL_LM", "llama", with_labels=True))
    output.loss.backward()
    torch.optim.SGD(encoder.parameters(), lr=1.0).step()
    model.eval()


def load_other_state(model, encoder) -> None:
    other = make_method("superpos", "llama", "CAUSAL_LM").prompt_encoder["default"]
    perturb(other, seed=11)
    encoder.load_state_dict(other.state_dict())


CHANGES = {
    "optimizer_step": optimizer_step,
    "load_state_dict": load_other_state,
    "to_bfloat16": lambda model, encoder: model.to(torch.bfloat16),
    "data_edit": lambda model, encoder: encoder.weights.data.add_(0.5),
}


@pytest.mark.parametrize("change", CHANGES)
def test_prompt_is_fresh_after_every_kind_of_change(change, tmp_path):
    """Whatever changes the parameters, the prompt used (and saved) is the one computed from them now."""
    model = make_method("superpos", "llama", "CAUSAL_LM").eval()
    encoder = model.prompt_encoder["default"]
    with torch.no_grad():
        before = model.get_prompt(batch_size=1).clone()
        logits_of(model, "CAUSAL_LM", "llama")  # evaluate once before the change
    CHANGES[change](model, encoder)
    with torch.no_grad():
        now = model.get_prompt(batch_size=1)
        assert torch.equal(now.float(), encoder.table()[None].to(now.dtype).float())
    assert not torch.equal(now.float(), before.float())
    model.save_pretrained(tmp_path)
    dtype = model.get_base_model().dtype
    reloaded = PeftModel.from_pretrained(make_tiny("llama", "CAUSAL_LM", dtype=dtype), tmp_path).eval()
    assert torch.equal(logits_of(reloaded, "CAUSAL_LM", "llama"), logits_of(model, "CAUSAL_LM", "llama"))


def test_reading_the_table_draws_no_random_numbers():
    """peft reads ``embedding.weight`` (for its device) on every forward: that must not shift a seeded run's
    random stream, e.g. by drawing Residual's MLP dropout."""
    model = make_method("residual", "llama", "CAUSAL_LM", mlp_dropout=0.5)
    model.train()
    encoder = model.prompt_encoder["default"]
    state = torch.get_rng_state()
    table = encoder.embedding.weight
    assert torch.equal(torch.get_rng_state(), state)
    with torch.no_grad():
        assert torch.equal(table, encoder.final_table())  # the dropout-free table, as saved and exported


# -- 8. export never overwrites --------------------------------------------------------------------------
@pytest.mark.parametrize("existing", ["adapter", "config_only", "earlier_export"])
def test_export_refuses_a_folder_holding_files_it_would_overwrite(existing, tmp_path):
    model = make_method("superpos", "llama", "CAUSAL_LM")
    target = tmp_path / "target"
    if existing == "adapter":
        model.save_pretrained(target)
    elif existing == "config_only":
        target.mkdir()
        (target / CONFIG_FILE).write_text('{"note": "mine"}')
    else:
        export_prompt_tuning(model, target)
    kept = folder_bytes(target)
    with pytest.raises(FileExistsError, match=rf"{target}.*{CONFIG_FILE}.*another folder"):
        export_prompt_tuning(model, target)
    assert folder_bytes(target) == kept
    assert sorted(p.name for p in target.iterdir()) == sorted(kept)  # no staging folder left behind
    if existing == "adapter":  # the adapter still loads and resumes
        PeftModel.from_pretrained(make_tiny("llama", "CAUSAL_LM"), target, is_trainable=True)


def test_export_into_a_folder_with_unrelated_files(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    export_prompt_tuning(make_method("superpos", "llama", "CAUSAL_LM"), tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert json.loads((tmp_path / CONFIG_FILE).read_text())["peft_type"] == "PROMPT_TUNING"


# -- 9. precision round trip -----------------------------------------------------------------------------
FLOATS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@pytest.mark.parametrize("loaded_on", FLOATS)
@pytest.mark.parametrize("made_on", FLOATS)
def test_same_base_model_in_any_float_dtype_loads(made_on, loaded_on, tmp_path):
    base = make_tiny("llama", "CAUSAL_LM", dtype=FLOATS[made_on])
    model = make_method("superpos", "llama", "CAUSAL_LM", base=base)
    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(make_tiny("llama", "CAUSAL_LM", dtype=FLOATS[loaded_on]), tmp_path)
    saved, original = loaded.prompt_encoder["default"], model.prompt_encoder["default"]
    for name, tensor in original.state_dict().items():
        assert torch.equal(saved.state_dict()[name], tensor), name  # the adapter's own E_freeze, ΔE, p'
    with pytest.raises(ValueError, match="differ from the ones this adapter was trained on"):
        PeftModel.from_pretrained(make_tiny("llama", "CAUSAL_LM", seed=1, dtype=FLOATS[loaded_on]), tmp_path)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_adapter_file_converted_to_half_precision_is_named(dtype, tmp_path):
    make_method("superpos", "llama", "CAUSAL_LM").save_pretrained(tmp_path)
    tensors = load_file(tmp_path / ADAPTER_FILE)
    save_file(
        {key: value.to(dtype) if value.is_floating_point() else value for key, value in tensors.items()},
        tmp_path / ADAPTER_FILE,
        metadata={"format": "pt"},
    )
    name = str(dtype).removeprefix("torch.")
    with pytest.raises(ValueError, match=rf"{name}.*saves float32.*converted"):
        PeftModel.from_pretrained(make_tiny("llama", "CAUSAL_LM"), tmp_path)


def test_adapter_saved_from_a_half_precision_encoder_loads(tmp_path):
    """An adapter whose encoder was cast to bf16 (``model.to(torch.bfloat16)``) is saved in fp32, losslessly."""
    model = make_method("superpos", "llama", "CAUSAL_LM").to(torch.bfloat16)
    model.save_pretrained(tmp_path)
    assert {value.dtype for value in load_file(tmp_path / ADAPTER_FILE).values()} == {torch.float32, torch.long}
    reloaded = PeftModel.from_pretrained(make_tiny("llama", "CAUSAL_LM", dtype=torch.bfloat16), tmp_path)
    assert torch.equal(logits_of(reloaded, "CAUSAL_LM", "llama"), logits_of(model, "CAUSAL_LM", "llama"))
    PeftModel.from_pretrained(make_tiny("llama", "CAUSAL_LM"), tmp_path)  # and onto the fp32 original


# -- 10. an adapter loaded for inference can be trained -----------------------------------------------------
@pytest.mark.parametrize(("family", "task"), [("llama", "CAUSAL_LM"), ("t5", "SEQ_2_SEQ_LM")])
@pytest.mark.parametrize("method", METHODS)
def test_inference_loaded_adapter_trains_once_unfrozen(method, family, task, tmp_path):
    make_method(method, family, task).save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(make_tiny(family, task), tmp_path)
    resumed = PeftModel.from_pretrained(make_tiny(family, task), tmp_path, is_trainable=True)
    for model in (loaded, resumed):
        encoder = model.prompt_encoder["default"]
        encoder.requires_grad_(True)
        model.train()
        torch.manual_seed(0)  # the same dropout draws in the backbone (dropout stays on for residual and dept)
        model(**inputs_for(task, family, with_labels=True)).loss.backward()
        for name, parameter in encoder.named_parameters():
            assert parameter.grad is not None, name
    gradients = [dict(m.prompt_encoder["default"].named_parameters()) for m in (loaded, resumed)]
    for name, parameter in gradients[0].items():
        assert torch.equal(parameter.grad, gradients[1][name].grad), name


# -- 11. encoder-decoder generate --------------------------------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
def test_seq2seq_generate_is_keyword_only_and_honours_generation_config(method):
    model = make_method(method, "t5", "SEQ_2_SEQ_LM")
    input_ids, attention_mask = tiny_batch("t5")
    config = GenerationConfig(max_new_tokens=4, min_new_tokens=4, eos_token_id=None, decoder_start_token_id=0)
    with pytest.raises(TypeError):
        model.generate(input_ids, config)
    with pytest.raises(TypeError):
        model.generate(input_ids[:1], input_ids=input_ids)
    with torch.no_grad():
        out = model.generate(input_ids=input_ids, attention_mask=attention_mask, generation_config=config)
    assert out.shape == (2, 5)
    with pytest.raises(ValueError, match="task_ids"):
        model.generate(input_ids=input_ids, task_ids=torch.zeros(2, dtype=torch.long))
    with pytest.warns(UserWarning, match="encoder_outputs"):
        model.generate(input_ids=input_ids, encoder_outputs=None, max_new_tokens=1)


# -- 12. disable_adapter gives the base model ------------------------------------------------------------
@pytest.mark.parametrize(("family", "task"), [("t5", "SEQ_2_SEQ_LM"), ("bart", "SEQ_2_SEQ_LM"), ("llama", "CAUSAL_LM")])
@pytest.mark.parametrize("method", METHODS)
def test_disable_adapter_gives_the_base_model(method, family, task):
    model = make_method(method, family, task)
    base = make_tiny(family, task)
    inputs = inputs_for(task, family)
    generate_inputs = {key: inputs[key] for key in ("input_ids", "attention_mask")}
    with torch.no_grad():
        expected_logits = base(**inputs).logits
        expected_ids = base.generate(**generate_inputs, max_new_tokens=4, min_new_tokens=4)
        with_prompt = model.generate(**generate_inputs, max_new_tokens=4, min_new_tokens=4)
        with model.disable_adapter():
            logits = model(**inputs).logits
            generated = model.generate(**generate_inputs, max_new_tokens=4, min_new_tokens=4)
        again = model.generate(**generate_inputs, max_new_tokens=4, min_new_tokens=4)
    assert torch.equal(logits, expected_logits)
    assert torch.equal(generated, expected_ids)
    if task == "SEQ_2_SEQ_LM":  # outside the context the prompt is used
        assert not torch.allclose(logits_of(model, task, family), expected_logits)
    assert torch.equal(again, with_prompt)  # the adapter is back after the context


# -- 13. config errors ----------------------------------------------------------------------------------------
SHARED_BAD = [
    ({"num_virtual_tokens": True}, "num_virtual_tokens must be a positive int"),
    ({"num_virtual_tokens": 2.0}, "num_virtual_tokens must be a positive int"),
    ({"seed": None}, "seed must be an int"),
    ({"seed": "0"}, "seed must be an int"),
    ({"task_type": None}, "task_type must be one of"),
    ({"task_type": "QUESTION_ANS"}, "task_type must be one of"),
    ({"sample_vocab_size": 2.5}, "sample_vocab_size must be a positive int"),
    ({"exclude_token_ids": [3, 4.5]}, "exclude_token_ids must be a list of ints"),
    ({"disable_dropout": "no"}, "disable_dropout must be True or False"),
]
OWN_BAD = {
    "superpos": [
        ({"m": True}, "m must be a positive int"),
        ({"m": 16.0}, "m must be a positive int"),
        ({"m": 2, "token_ids": [5.7, 6]}, "token_ids must be a list of ints"),
        ({"m": 2, "token_ids": ["5", "6"]}, "token_ids must be a list of ints"),
        ({"weight_init_std": math.nan}, "weight_init_std must be a finite number > 0"),
        ({"weight_init_std": math.inf}, "weight_init_std must be a finite number > 0"),
        ({"weight_init_std": True}, "weight_init_std must be a finite number > 0"),
        ({"use_softmax": True, "m": 1}, r"use_softmax.*m=1"),
        ({"use_softmax": 1}, "use_softmax must be True or False"),
        ({"weight_init": "zeros"}, r"weight_init must be one of \('normal', 'uniform', 'one_hot'\)"),
    ],
    "residual": [
        ({"bottleneck_size": True}, "bottleneck_size must be a positive int"),
        ({"mlp_dropout": math.nan}, r"mlp_dropout must be a number in \[0, 1\)"),
        ({"mlp_dropout": "0.1"}, r"mlp_dropout must be a number in \[0, 1\)"),
        ({"use_layer_norm": "yes"}, "use_layer_norm must be True or False"),
    ],
    "dept": [
        ({"r": True}, "r must be a positive int"),
        ({"prompt_lr": math.nan}, "prompt_lr must be a finite number > 0"),
        ({"lora_lr": True}, "lora_lr must be a finite number > 0"),
        ({"align_to_attention_mask": None}, "align_to_attention_mask must be True or False"),
    ],
}
BAD_CASES = [(method, kwargs, match) for method in METHODS for kwargs, match in SHARED_BAD + OWN_BAD[method]]


@pytest.mark.parametrize(("method", "kwargs", "match"), BAD_CASES)
def test_bad_config_values(method, kwargs, match):
    config_cls, _ = SMALL[method]
    with pytest.raises(ValueError, match=match):
        config_cls(**{"task_type": "CAUSAL_LM", **kwargs})


def test_weight_init_is_an_enum_saved_as_its_string(tmp_path):
    config = SuperPosPromptConfig(task_type="CAUSAL_LM", weight_init="one_hot", num_virtual_tokens=2, m=4)
    assert config.weight_init is WeightInit.ONE_HOT
    config.save_pretrained(tmp_path)
    assert json.loads((tmp_path / CONFIG_FILE).read_text())["weight_init"] == "one_hot"
    assert SuperPosPromptConfig.from_pretrained(tmp_path).weight_init is WeightInit.ONE_HOT


# -- 13. damaged adapter folders and saving ---------------------------------------------------------------------
@pytest.fixture
def saved(tmp_path) -> Path:
    folder = tmp_path / "adapter"
    make_method("superpos", "llama", "CAUSAL_LM").save_pretrained(folder)
    return folder


@pytest.mark.parametrize("is_trainable", [False, True])
def test_unknown_peft_type_in_saved_config(saved, is_trainable):
    config = json.loads((saved / CONFIG_FILE).read_text())
    config["peft_type"] = "BOGUS"
    (saved / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(ValueError, match=rf"peft_type 'BOGUS' in .*{CONFIG_FILE}.*not a known"):
        PeftModel.from_pretrained(make_tiny("llama", "CAUSAL_LM"), saved, is_trainable=is_trainable)
    with pytest.raises(ValueError, match="peft_type 'BOGUS'"):
        make_method("superpos", "llama", "CAUSAL_LM").load_adapter(saved, adapter_name="other")


@pytest.mark.parametrize("is_trainable", [False, True])
def test_saved_config_that_is_not_json(saved, is_trainable):
    (saved / CONFIG_FILE).write_text('{"peft_type": "SUPERPOS_PROMPT",')
    with pytest.raises(ValueError, match=rf"{CONFIG_FILE} .*is not valid JSON.*save the adapter again"):
        PeftModel.from_pretrained(make_tiny("llama", "CAUSAL_LM"), saved, is_trainable=is_trainable)


@pytest.mark.parametrize("is_trainable", [False, True])
def test_missing_weights_file(saved, is_trainable):
    (saved / ADAPTER_FILE).unlink()
    with pytest.raises(FileNotFoundError, match=rf"{saved}.*no {ADAPTER_FILE}"):
        PeftModel.from_pretrained(make_tiny("llama", "CAUSAL_LM"), saved, is_trainable=is_trainable)
    with pytest.raises(FileNotFoundError, match=f"no {ADAPTER_FILE}"):
        make_method("superpos", "llama", "CAUSAL_LM").load_adapter(saved, adapter_name="other")


def save_pickled(model, folder: Path) -> None:
    with pytest.warns(UserWarning, match=f"{PICKLE_FILE}, a pickle"):
        model.save_pretrained(folder, safe_serialization=False)


@pytest.mark.parametrize("method", METHODS)
def test_pickle_save_loads_bit_exact_and_replaces_the_other_format(method, tmp_path):
    """``safe_serialization=False`` writes peft's ``adapter_model.bin``; a save in one format removes the other
    format's file, so the loader (which prefers safetensors) never reads an older save."""
    model = make_method(method, "llama", "CAUSAL_LM")
    model.save_pretrained(tmp_path / "adapter")
    perturb(model.prompt_encoder["default"], seed=8)
    save_pickled(model, tmp_path / "adapter")
    assert sorted(folder_bytes(tmp_path / "adapter")) == sorted([CONFIG_FILE, PICKLE_FILE, "README.md"])
    loaded = PeftModel.from_pretrained(make_tiny("llama", "CAUSAL_LM"), tmp_path / "adapter")
    assert torch.equal(logits_of(loaded, "CAUSAL_LM", "llama"), logits_of(model, "CAUSAL_LM", "llama"))
    perturb(model.prompt_encoder["default"], seed=9)
    model.save_pretrained(tmp_path / "adapter")
    assert sorted(folder_bytes(tmp_path / "adapter")) == sorted([ADAPTER_FILE, CONFIG_FILE, "README.md"])
    loaded = PeftModel.from_pretrained(make_tiny("llama", "CAUSAL_LM"), tmp_path / "adapter")
    assert torch.equal(logits_of(loaded, "CAUSAL_LM", "llama"), logits_of(model, "CAUSAL_LM", "llama"))


def test_truncated_pickle_file_is_named(tmp_path):
    save_pickled(make_method("superpos", "llama", "CAUSAL_LM"), tmp_path / "pickled")
    data = (tmp_path / "pickled" / PICKLE_FILE).read_bytes()
    (tmp_path / "pickled" / PICKLE_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=rf"{PICKLE_FILE}.*truncated or corrupt"):
        PeftModel.from_pretrained(make_tiny("llama", "CAUSAL_LM"), tmp_path / "pickled")


class _RunsCodeWhenUnpickled:
    """What a malicious pickle holds: unpickling it would create ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def test_pickle_file_is_loaded_weights_only(tmp_path):
    """peft reads ``adapter_model.bin`` with ``torch.load(weights_only=True)``: a file holding anything but tensors
    is refused with a clear error, and nothing in it runs."""
    model = make_method("superpos", "llama", "CAUSAL_LM")
    save_pickled(model, tmp_path / "pickled")
    tensors = torch.load(tmp_path / "pickled" / PICKLE_FILE, weights_only=True)
    tensors["payload"] = _RunsCodeWhenUnpickled(tmp_path / "ran")
    torch.save(tensors, tmp_path / "pickled" / PICKLE_FILE)
    with pytest.raises(ValueError, match=rf"{PICKLE_FILE} .*holds objects other than tensors"):
        PeftModel.from_pretrained(make_tiny("llama", "CAUSAL_LM"), tmp_path / "pickled")
    assert not (tmp_path / "ran").exists()


@pytest.mark.filterwarnings(f"ignore:.*{PICKLE_FILE}, a pickle:UserWarning")
@pytest.mark.parametrize("safe_serialization", [True, False], ids=["safetensors", "pickle"])
@pytest.mark.parametrize("adapter_name", ["default", "named"])
def test_save_interrupted_midway_leaves_the_saved_adapter_intact(
    tmp_path, monkeypatch, adapter_name, safe_serialization
):
    """A save that dies while writing the weights (disk full, kill) must not destroy the adapter saved there
    before, in either format: peft writes in place; ours stage the files and rename them in."""
    import peft.peft_model

    base = make_tiny("llama", "CAUSAL_LM")
    model = get_peft_model(base, SuperPosPromptConfig(task_type="CAUSAL_LM", num_virtual_tokens=4, m=16), adapter_name)
    perturb(model.prompt_encoder[adapter_name])
    model.save_pretrained(tmp_path / "adapter")
    before = {p.relative_to(tmp_path): p.read_bytes() for p in sorted(tmp_path.rglob("*")) if p.is_file()}
    perturb(model.prompt_encoder[adapter_name], seed=8)

    def die_halfway(tensors, filename, *args, **kwargs):
        Path(filename).write_bytes(b"\0" * 100)
        raise OSError(28, "No space left on device")

    if safe_serialization:
        monkeypatch.setattr(peft.peft_model, "safe_save_file", die_halfway)
    else:
        monkeypatch.setattr(peft.peft_model.torch, "save", die_halfway)
    with pytest.raises(OSError, match="No space left"):
        model.save_pretrained(tmp_path / "adapter", safe_serialization=safe_serialization)
    after = {p.relative_to(tmp_path): p.read_bytes() for p in sorted(tmp_path.rglob("*")) if p.is_file()}
    assert after == before  # untouched, and no staging folder left behind
    monkeypatch.undo()
    model.save_pretrained(tmp_path / "adapter")  # a later save replaces it and loads bit-exact
    loaded = PeftModel.from_pretrained(
        make_tiny("llama", "CAUSAL_LM"),
        tmp_path / "adapter" / ("" if adapter_name == "default" else adapter_name),
        adapter_name=adapter_name,
    )
    for key, value in model.prompt_encoder[adapter_name].state_dict().items():
        assert torch.equal(loaded.prompt_encoder[adapter_name].state_dict()[key], value), key
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]


def test_staging_folder_of_a_killed_save_is_removed_by_the_next_save(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = socket.gethostname()
    abandoned = tmp_path / f".adapter.saving-{host}-{int(dead.stdout)}-x1"  # its process is gone
    live = tmp_path / f".adapter.saving-{host}-{os.getpid()}-x2"  # a save in progress in a live process
    other_host = tmp_path / f".adapter.saving-elsewhere-{int(dead.stdout)}-x3"  # a pid of another machine
    for folder in (abandoned, live, other_host):
        folder.mkdir()
        (folder / ADAPTER_FILE).write_bytes(b"partial")
    make_method("superpos", "llama", "CAUSAL_LM").save_pretrained(tmp_path / "adapter")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["adapter", live.name, other_host.name])


@pytest.mark.parametrize("method", METHODS)
def test_push_to_hub_uploads_an_adapter_that_loads_bit_exact(tmp_path, monkeypatch, method):
    """``push_to_hub`` (transformers' ``PushToHubMixin``) saves through our ``save_pretrained`` into a temporary
    folder and uploads it; the Hub is replaced by a local folder that receives the upload."""
    import shutil
    import types

    import transformers.utils.hub as hub

    hub_folder = tmp_path / "hub" / "user" / "adapter"
    uploads = []

    def upload(self, working_dir, repo_id, **kwargs):
        uploads.append(repo_id)
        shutil.copytree(working_dir, hub_folder, dirs_exist_ok=True)

    card = types.SimpleNamespace(save=lambda path: Path(path).write_text("model card"))
    create_repo = lambda repo_id, **_: types.SimpleNamespace(repo_id=repo_id)  # noqa: E731
    # transformers 5.10 and later create the repo through hub.hf_api(), 5.8 and earlier through hub.create_repo
    monkeypatch.setattr(hub, "hf_api", lambda: types.SimpleNamespace(create_repo=create_repo), raising=False)
    monkeypatch.setattr(hub, "create_repo", create_repo, raising=False)
    monkeypatch.setattr(hub, "create_and_tag_model_card", lambda *args, **kwargs: card)
    monkeypatch.setattr(hub.PushToHubMixin, "_upload_modified_files", upload)

    model = make_method(method, "llama", "CAUSAL_LM")
    model.push_to_hub("user/adapter")
    assert uploads == ["user/adapter"]
    assert sorted(p.name for p in hub_folder.iterdir()) == sorted([ADAPTER_FILE, CONFIG_FILE, "README.md"])
    loaded = PeftModel.from_pretrained(make_tiny("llama", "CAUSAL_LM"), hub_folder)
    assert torch.equal(logits_of(loaded, "CAUSAL_LM", "llama"), logits_of(model, "CAUSAL_LM", "llama"))


def test_every_patch_of_peft_is_listed_and_installed():
    """``_peft_compat.PATCHES`` is the one list of what this package replaces in peft."""
    from peft_superpos import _peft_compat

    assert len({(cls, attribute) for cls, attribute, _ in _peft_compat.PATCHES}) == len(_peft_compat.PATCHES)
    for cls, attribute, replacement in _peft_compat.PATCHES:
        assert cls.__dict__[attribute] is replacement, (cls.__name__, attribute)


def test_generation_patch_is_installed_exactly_where_transformers_renamed_the_cache():
    """transformers 5.24 renamed the generation cache (``past_key_values`` -> ``cache``); the patch that hands it to
    peft under the old name is in ``PATCHES`` from that version on, and only there."""
    import transformers
    from packaging.version import Version
    from peft import PeftModelForCausalLM

    from peft_superpos._peft_compat import PATCHES, input_embeds

    prepare_inputs = {(cls, name): patch for cls, name, patch in PATCHES}[
        (PeftModelForCausalLM, "prepare_inputs_for_generation")
    ]
    renamed = Version(transformers.__version__).release >= (5, 24)
    assert (prepare_inputs is not input_embeds.causal_prepare_inputs) == renamed


def test_disable_adapter_on_encoder_only_models_for_stock_prompt_tuning_too():
    """peft 0.21's disable_adapter crashes (UnboundLocalError) for any prompt-learning adapter on a model
    without prepare_inputs_for_generation; the patch covers stock prompt tuning as well."""
    from peft import PromptTuningConfig, get_peft_model

    base = make_tiny("bert", "SEQ_CLS")
    model = get_peft_model(base, PromptTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=3))
    input_ids, attention_mask = tiny_batch("bert")
    with torch.no_grad():
        with model.disable_adapter():
            disabled = model(input_ids=input_ids, attention_mask=attention_mask).logits
        expected = model.get_base_model()(input_ids=input_ids, attention_mask=attention_mask).logits
        adapted = model(input_ids=input_ids, attention_mask=attention_mask).logits
    torch.testing.assert_close(disabled, expected, rtol=0, atol=0)
    assert not torch.allclose(adapted, disabled)
