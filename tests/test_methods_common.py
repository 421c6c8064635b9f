"""The contract every prompt method of peft_superpos keeps, in the manner of peft's own ``PeftCommonTester``: one
set of tests parametrised over every registered method (``tiny_models.prompt_methods()``) and every tiny
architecture and task type (``tiny_models.FAMILY_TASKS``); a newly registered method is picked up.

Covered: forward and backward (every trainable tensor gets a gradient, frozen buffers none), padding and
``inputs_embeds``, generation with left and right padding, ``disable_adapter``, gradient checkpointing, fp16 and
bf16 base models, two adapters of one method on one model, peft's own save tests in both formats (safetensors and
the pickle ``adapter_model.bin``), save and reload in a fresh process (bit-exact), resuming training (bit-exact
next step), and the export to stock prompt tuning where the method allows it.
Each method's own formula lives in its own test file.
"""

from __future__ import annotations

import copy
import functools
import json
import re
import warnings
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from tiny_models import (
    ALL_FAMILIES,
    CAUSAL_FAMILIES,
    EOS,
    FAMILY_TASKS,
    GENERATIVE_TASKS,
    HIDDEN,
    NUM_VIRTUAL_TOKENS,
    POSITIONS_COUNT_LEFT_PADDING,
    FreshReload,
    default_task,
    fresh_reload,
    loss_of,
    main_output,
    make_peft,
    make_tiny,
    method_id,
    output_loss,
    perturb,
    prompt_methods,
    reference_outputs,
    tiny_batch,
    training_batch,
)

from peft_superpos import export_prompt_tuning
from peft_superpos._peft_compat import generation

N = NUM_VIRTUAL_TOKENS
ADAPTER_FILE = "adapter_model.safetensors"
METHODS = prompt_methods()
CLASSIFICATION_TASKS = ("SEQ_CLS", "TOKEN_CLS")
PER_TOKEN_TASKS = ("CAUSAL_LM", "TOKEN_CLS", "FEATURE_EXTRACTION")  # one output per prompt position and token
GENERATIVE_CASES = [(family, task) for family, task in FAMILY_TASKS if task in GENERATIVE_TASKS]
MAIN_CASES = [(family, default_task(family)) for family in ALL_FAMILIES]


def case_ids(cases):
    return [f"{family}-{task}" for family, task in cases]


with_methods = pytest.mark.parametrize("method", METHODS, ids=[method_id(cls) for cls, _ in METHODS])
with_all_cases = pytest.mark.parametrize(("family", "task"), FAMILY_TASKS, ids=case_ids(FAMILY_TASKS))
with_generative_cases = pytest.mark.parametrize(("family", "task"), GENERATIVE_CASES, ids=case_ids(GENERATIVE_CASES))
with_main_cases = pytest.mark.parametrize(("family", "task"), MAIN_CASES, ids=case_ids(MAIN_CASES))


def build(method, family: str, task: str, seed: int = 0, noise_seed: int = 7, base=None):
    """A tiny ``family`` model with a trained-looking ``method`` adapter (config ``seed``, every prompt
    parameter moved off its init by noise seeded with ``noise_seed``)."""
    config_cls, kwargs = method
    model = make_peft(family, task, config_cls, base=base, seed=seed, **kwargs)
    perturb(model, noise_seed)
    return model


@functools.cache
def base_model(family: str, task: str):
    """The tiny base model, built once: only for tests that never change it."""
    return make_tiny(family, task)


def encoder_of(model, adapter_name: str = "default"):
    return model.prompt_encoder[adapter_name]


def exportable(model) -> bool:
    return not getattr(encoder_of(model), "not_exportable_reason", None)


def sgd_step(model, batch, lr: float = 0.5) -> None:
    """One SGD step in train mode; the RNG is seeded first, so a backbone with dropout draws the same masks."""
    model.train()
    torch.manual_seed(0)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr)
    loss_of(model, batch).backward()
    optimizer.step()
    optimizer.zero_grad()
    model.eval()


def assert_same_outputs(actual: dict, expected: dict) -> None:
    keys = [key for key in expected if key.startswith(("logits", "generated"))]
    assert keys
    for key in keys:
        assert actual[key].shape == expected[key].shape, key
        difference = (actual[key].double() - expected[key].double()).abs().max().item()
        assert torch.equal(actual[key], expected[key]), f"{key} differs (max {difference})"


# -- saved adapters, reloaded in two fresh processes ------------------------------------------------------------
class SavedAdapters:
    """One trained-looking adapter per (method, family, task): the model, saved and exported where the method
    allows it, with its outputs (``reference_outputs``) and prompt table here. ``reloaded`` and ``exported``: the
    fresh processes reloading them (set by the ``saved`` fixture)."""

    reloaded: FreshReload
    exported: FreshReload

    def __init__(self, root: Path) -> None:
        self.root = root
        self.models: dict[tuple, PeftModel] = {}
        self.reference: dict[tuple, dict] = {}
        self.tables: dict[tuple, torch.Tensor] = {}
        self.reload_cases: list[tuple[str, str, str]] = []  # (family, task, folder)
        self.export_cases: list[tuple[str, str, str]] = []
        for method in METHODS:
            for family, task in FAMILY_TASKS:
                key = self.key(method, family, task)
                model = build(method, family, task).eval()
                model.save_pretrained(self.adapter(key))
                self.reload_cases.append((family, task, str(self.adapter(key))))
                if exportable(model):
                    export_prompt_tuning(model, self.export(key))
                    self.export_cases.append((family, task, str(self.export(key))))
                self.models[key] = model
                self.reference[key] = reference_outputs(model, family, task)
                with torch.no_grad():
                    self.tables[key] = encoder_of(model).table().clone()

    @staticmethod
    def key(method, family: str, task: str) -> tuple[str, str, str]:
        return method_id(method[0]), family, task

    def adapter(self, key: tuple) -> Path:
        return self.root.joinpath(*key, "adapter")

    def export(self, key: tuple) -> Path:
        return self.root.joinpath(*key, "export")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """The saved adapters; one fresh process reloads every adapter, another every export (without
    peft_superpos), both started at once and awaited by the first test that needs their results. Where stock peft
    needs our generation patch (transformers >= 5.24, see ``_peft_compat.generation``), the process without
    peft_superpos generates without a KV cache, as the README tells users of exported adapters to."""
    root = tmp_path_factory.mktemp("saved_adapters")
    adapters = SavedAdapters(root)
    stock_use_cache = not generation.NEEDED
    with (
        fresh_reload(adapters.reload_cases, root, "reload_adapters") as reloaded,
        fresh_reload(
            adapters.export_cases, root, "reload_exports", with_package=False, use_cache=stock_use_cache
        ) as exported,
    ):
        adapters.reloaded, adapters.exported = reloaded, exported
        yield adapters


@pytest.fixture(scope="module", autouse=True)
def _start_reloads_first(saved):
    """Save the adapters and start the fresh processes before the first test, so that they run alongside."""


def test_every_registered_method_is_tested():
    """The method list comes from peft's registry: the three methods of this package at least."""
    assert {"SuperPosPrompt", "ResidualPrompt", "DePT"} <= {method_id(cls) for cls, _ in METHODS}


# -- forward and backward ---------------------------------------------------------------------------------------
@with_methods
@with_all_cases
def test_forward_backward_reaches_every_trainable_tensor(method, family, task, saved):
    model = copy.deepcopy(saved.models[saved.key(method, family, task)])
    encoder = encoder_of(model)
    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    prompt_names = {f"prompt_encoder.default.{name}" for name, _ in encoder.named_parameters()}
    assert prompt_names and prompt_names <= set(trainable)
    others = set(trainable) - prompt_names  # a classification head (modules_to_save), nothing else
    if task in CLASSIFICATION_TASKS:
        assert others and all(".modules_to_save.default." in name for name in others), others
    else:
        assert not others, others
    assert model.get_nb_trainable_parameters()[0] == sum(p.numel() for p in trainable.values())
    buffers = dict(encoder.named_buffers())  # e.g. SuperPos' E_freeze and token ids: never trained
    assert all(not buffer.requires_grad for buffer in buffers.values())
    assert not {id(b) for b in buffers.values()} & {id(p) for p in model.parameters()}
    buffers_before = {name: buffer.clone() for name, buffer in buffers.items()}
    base_before = {name: p.detach().clone() for name, p in model.get_base_model().named_parameters()}

    model.train()
    batch = training_batch(family, task)
    output = model(**batch)
    length = batch["input_ids"].shape[1]
    assert main_output(output).shape[0] == 2
    if task in PER_TOKEN_TASKS:
        assert main_output(output).shape[1] == N + length
    if task == "TOKEN_CLS":  # the prompt positions carry no loss
        token_logits = output.logits[:, N:].flatten(0, 1)
        expected_loss = torch.nn.functional.cross_entropy(token_logits, batch["labels"].flatten())
        torch.testing.assert_close(output.loss, expected_loss)
    output_loss(output).backward()
    for name, parameter in trainable.items():
        assert parameter.grad is not None, name
        assert torch.isfinite(parameter.grad).all(), name
        assert parameter.grad.abs().sum() > 0, name
    assert all(buffer.grad is None for buffer in buffers.values())

    prompt_before = {name: p.detach().clone() for name, p in encoder.named_parameters()}
    torch.optim.AdamW(trainable.values(), lr=1e-2, weight_decay=0.1).step()
    for name, parameter in encoder.named_parameters():
        assert not torch.equal(parameter, prompt_before[name]), name
    for name, buffer in buffers.items():
        assert torch.equal(buffer, buffers_before[name]), name
    for name, parameter in model.get_base_model().named_parameters():
        if "modules_to_save" not in name and name in base_before:
            assert torch.equal(parameter, base_before[name]), name


@with_methods
@with_all_cases
def test_padding_and_inputs_embeds(method, family, task, saved):
    """``inputs_embeds`` gives exactly what ``input_ids`` gives; a padded row gives what it gives alone."""
    model = saved.models[saved.key(method, family, task)]
    input_ids, attention_mask = tiny_batch(family, pad_side="right")
    extra = {}
    if task == "SEQ_2_SEQ_LM":
        extra["decoder_input_ids"] = torch.full((2, 3), model.get_base_model().config.decoder_start_token_id)
    keep = attention_mask[1].bool()
    with torch.no_grad():
        batched = main_output(model(input_ids=input_ids, attention_mask=attention_mask, **extra))
        embeds = model.get_base_model().get_input_embeddings()(input_ids)
        from_embeds = main_output(model(inputs_embeds=embeds, attention_mask=attention_mask, **extra))
        alone_extra = {key: value[1:] for key, value in extra.items()}
        alone = main_output(
            model(input_ids=input_ids[1:, keep], attention_mask=attention_mask[1:, keep], **alone_extra)
        )
    torch.testing.assert_close(from_embeds, batched, rtol=0, atol=0)
    if task in PER_TOKEN_TASKS:  # n prompt positions, then the real tokens
        batched = batched[:, : N + int(keep.sum())]
    torch.testing.assert_close(batched[1:], alone, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("family", ["gpt2", "t5", "bert"])
@with_methods
def test_config_in_inference_mode_uses_the_prompt(method, family):
    """peft reads ``embedding.weight`` directly when ``inference_mode`` is set: it must hold the table."""
    config_cls, kwargs = method
    task = default_task(family)
    input_ids, attention_mask = tiny_batch(family)
    extra = {"decoder_input_ids": input_ids[:, :2]} if task == "SEQ_2_SEQ_LM" else {}
    with torch.no_grad():
        reference = make_peft(family, task, config_cls, **kwargs)
        expected = main_output(reference(input_ids=input_ids, attention_mask=attention_mask, **extra))
        model = make_peft(family, task, config_cls, inference_mode=True, **kwargs)
        assert model.peft_config["default"].inference_mode
        assert torch.equal(encoder_of(model).embedding.weight, encoder_of(model).table())
        actual = main_output(model(input_ids=input_ids, attention_mask=attention_mask, **extra))
    assert torch.equal(actual, expected)


# -- generation and disable_adapter -------------------------------------------------------------------------------
def generate(model, input_ids, attention_mask, steps: int = 5) -> torch.Tensor:
    with torch.no_grad():
        return model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=steps)


@with_methods
@with_generative_cases
def test_generate(method, family, task, saved):
    """Greedy generation (the batches of ``reference_outputs``): a row gives what it gives alone, with left padding
    (decoder-only) and right padding."""
    key = saved.key(method, family, task)
    model, reference = saved.models[key], saved.reference[key]
    if task == "CAUSAL_LM":
        first_alone = None
        for pad_side in ("left", "right"):
            input_ids, attention_mask = tiny_batch(family, pad_side=pad_side)
            out, length = reference[f"generated_{pad_side}"], input_ids.shape[1]
            assert out.shape == (2, length + 5)
            assert torch.equal(out[:, :length], input_ids)
            # the unpadded row (the same in both batches) does not depend on its neighbour
            first_alone = generate(model, input_ids[:1], attention_mask[:1]) if first_alone is None else first_alone
            assert torch.equal(out[:1], first_alone)
        # left padding, the right side for decoder-only generation: padding changes nothing, except where the
        # positions count the pads (peft drops position_ids for prompt methods; README, "Task types"): those are
        # checked against a greedy reference with the same positions (test_left_padded_generate_...)
        if family in POSITIONS_COUNT_LEFT_PADDING:
            return
        input_ids, attention_mask = tiny_batch(family, pad_side="left")
        keep = attention_mask[1].bool()
        alone = generate(model, input_ids[1:, keep], attention_mask[1:, keep])
        assert torch.equal(reference["generated_left"][1, length:], alone[0, keep.sum() :])
        return
    input_ids, attention_mask = tiny_batch(family, pad_side="right")
    out = reference["generated_right"]
    assert out.shape[0] == 2 and 2 <= out.shape[1] <= 6
    keep = attention_mask[1].bool()
    alone = generate(model, input_ids[1:, keep], attention_mask[1:, keep])
    assert torch.equal(out[1, : alone.shape[1]], alone[0])
    first_alone = generate(model, input_ids[:1], attention_mask[:1])
    assert torch.equal(out[:1], first_alone[:, : out.shape[1]])
    # generation uses the prompt: it matches a forward pass on the generated prefix
    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=out[:, :-1]).logits
    assert torch.equal(logits.argmax(-1)[0], out[0, 1:])


def greedy_reference(model, input_ids, attention_mask, steps: int) -> torch.Tensor:
    """Greedy decoding by hand on the base model, without a cache and never choosing EOS (as ``min_new_tokens``):
    the prompt table, then the input embeddings (adjusted where the method does, e.g. DePT), then the plain
    embeddings of the generated tokens."""
    base, batch_size = model.get_base_model(), input_ids.shape[0]
    adjust = getattr(encoder_of(model), "adjust_input_embeds", None)
    sequence = input_ids
    with torch.no_grad():
        inputs = model.word_embeddings(input_ids)
        inputs = inputs if adjust is None else adjust(inputs, attention_mask)
        inputs = torch.cat((model.get_prompt(batch_size=batch_size).to(inputs.dtype), inputs), dim=1)
        for _ in range(steps):
            embeds = torch.cat((inputs, model.word_embeddings(sequence[:, input_ids.shape[1] :])), dim=1)
            generated = sequence.shape[1] - input_ids.shape[1]
            mask = torch.cat((attention_mask.new_ones(batch_size, N), attention_mask), dim=1)
            mask = torch.cat((mask, attention_mask.new_ones(batch_size, generated)), dim=1)
            logits = base(inputs_embeds=embeds, attention_mask=mask).logits
            logits[:, -1, EOS] = -float("inf")  # as min_new_tokens does
            sequence = torch.cat((sequence, logits[:, -1].argmax(-1, keepdim=True)), dim=1)
    return sequence


def check_left_padded_generate(model, family: str) -> None:
    """Left-padded greedy generation gives the same tokens with and without the KV cache, and the tokens of
    ``greedy_reference``: the prompt goes in once, in front of the input, and the cache stays aligned with the
    attention mask (transformers 5.24 renamed the cache that peft 0.21 looks for, see
    ``_peft_compat.generation``; OPT and BLOOM derive positions and ALiBi from the mask)."""
    input_ids, attention_mask = tiny_batch(family, pad_side="left")
    settings = {"max_new_tokens": 4, "min_new_tokens": 4}
    with torch.no_grad():
        cached = model.generate(input_ids=input_ids, attention_mask=attention_mask, **settings)
        uncached = model.generate(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **settings)
    assert torch.equal(cached, uncached)
    assert torch.equal(cached, greedy_reference(model, input_ids, attention_mask, steps=4))


@with_methods
@pytest.mark.parametrize("family", CAUSAL_FAMILIES)
def test_left_padded_generate_matches_greedy_reference(method, family, saved):
    check_left_padded_generate(saved.models[saved.key(method, family, "CAUSAL_LM")], family)


@pytest.mark.parametrize("family", CAUSAL_FAMILIES)
def test_stock_prompt_tuning_left_padded_generate(family):
    """The generation patch covers stock prompt tuning too (the format ``export_prompt_tuning`` writes)."""
    from peft import PromptTuningConfig

    model = make_peft(family, "CAUSAL_LM", PromptTuningConfig, num_virtual_tokens=N)
    perturb(model)
    check_left_padded_generate(model.eval(), family)


def forward_inputs(family: str, task: str) -> dict[str, torch.Tensor]:
    input_ids, attention_mask = tiny_batch(family, pad_side="left" if task == "CAUSAL_LM" else "right")
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
    if task == "SEQ_2_SEQ_LM":
        inputs["decoder_input_ids"] = input_ids[:, :3]
    return inputs


@with_methods
@pytest.mark.parametrize(("family", "task"), FAMILY_TASKS, ids=case_ids(FAMILY_TASKS))
def test_disable_adapter_forward_is_the_base_model(method, family, task, saved):
    model, base = saved.models[saved.key(method, family, task)], base_model(family, task)
    inputs = forward_inputs(family, task)
    with torch.no_grad():
        adapted = main_output(model(**inputs))
        expected = main_output(base(**inputs))
        with model.disable_adapter():
            disabled = main_output(model(**inputs))
        again = main_output(model(**inputs))
    torch.testing.assert_close(disabled, expected, rtol=0, atol=0)
    torch.testing.assert_close(again, adapted, rtol=0, atol=0)  # the adapter is back on leaving the context
    if task in PER_TOKEN_TASKS:
        assert adapted.shape[1] == N + disabled.shape[1]
        adapted = adapted[:, N:]
    assert not torch.allclose(adapted, disabled)  # the prompt is used


@with_methods
@pytest.mark.parametrize(("family", "task"), GENERATIVE_CASES, ids=case_ids(GENERATIVE_CASES))
def test_disable_adapter_generate_is_the_base_model(method, family, task, saved):
    """Greedy generation inside ``disable_adapter`` gives the base model's tokens and (up to rounding) scores;
    the scores too, since a tiny model may pick the same tokens with and without the prompt."""
    model, base = saved.models[saved.key(method, family, task)], base_model(family, task)
    inputs = forward_inputs(family, task)
    inputs.pop("decoder_input_ids", None)
    settings = {"max_new_tokens": 3, "min_new_tokens": 3, "output_scores": True, "return_dict_in_generate": True}
    with torch.no_grad():
        expected = base.generate(**inputs, **settings)
        with model.disable_adapter():
            generated = model.generate(**inputs, **settings)
    assert torch.equal(generated.sequences, expected.sequences)
    torch.testing.assert_close(torch.stack(generated.scores), torch.stack(expected.scores), rtol=1e-5, atol=1e-6)


# -- gradient checkpointing, half-precision base models ----------------------------------------------------------
@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")
@with_methods
@with_main_cases
def test_gradient_checkpointing(method, family, task):
    base = make_tiny(family, task)
    getattr(base, "activation_checkpointing_enable", base.gradient_checkpointing_enable)()  # renamed in 5.25
    model = build(method, family, task, base=base)
    model.train()
    assert getattr(base, "is_activation_checkpointing", None) or base.is_gradient_checkpointing
    batch = training_batch(family, task)
    loss_of(model, batch).backward()
    reference = build(method, family, task)  # the same gradients as without checkpointing
    reference.train()
    loss_of(reference, batch).backward()
    expected = dict(encoder_of(reference).named_parameters())
    for name, parameter in encoder_of(model).named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
        torch.testing.assert_close(parameter.grad, expected[name].grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@with_methods
@with_main_cases
def test_half_precision_base(method, family, task, dtype, saved):
    """An adapter made on a half-precision base keeps fp32 state, outputs the model dtype and trains; one saved
    on the fp32 base loads onto a half copy of it unchanged and gives about the same outputs."""
    model = build(method, family, task, base=make_tiny(family, task, dtype=dtype))
    encoder = encoder_of(model)
    assert all(tensor.dtype == torch.float32 for tensor in encoder.state_dict().values() if tensor.is_floating_point())
    assert model.get_prompt(batch_size=2).dtype == dtype
    model.train()
    output = model(**training_batch(family, task))
    assert main_output(output).dtype == dtype
    output_loss(output).backward()
    for name, parameter in encoder.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name

    key = saved.key(method, family, task)
    loaded = PeftModel.from_pretrained(make_tiny(family, task, dtype=dtype), saved.adapter(key))
    expected_state = encoder_of(saved.models[key]).state_dict()
    for name, tensor in encoder_of(loaded).state_dict().items():
        assert torch.equal(tensor, expected_state[name]), name
    logits = reference_outputs(loaded, family, task, generate=False)["logits_right"]
    reference = saved.reference[key]["logits_right"]
    assert logits.dtype == dtype
    assert (logits.float() - reference).abs().max() <= 0.1 * reference.abs().max()


# -- two adapters of one method -------------------------------------------------------------------------------
@with_methods
@with_main_cases
def test_two_adapters_on_one_model(method, family, task, saved):
    """A second adapter loaded next to the first: ``set_adapter`` switches, each gives what its own single-adapter
    model gives, and training the active one leaves the other without gradients."""
    model = build(method, family, task, seed=1, noise_seed=11).eval()
    alone = reference_outputs(model, family, task, generate=False)
    key = saved.key(method, family, task)
    model.load_adapter(saved.adapter(key), adapter_name="other", is_trainable=True)
    assert not model.peft_config["other"].inference_mode
    assert_same_outputs(reference_outputs(model, family, task, generate=False), alone)  # "default" stays active
    model.set_adapter("other")
    other = reference_outputs(model, family, task)
    assert_same_outputs(other, saved.reference[key])
    assert not torch.equal(other["logits_right"], alone["logits_right"])
    model.set_adapter("default")
    assert_same_outputs(reference_outputs(model, family, task, generate=False), alone)

    model.set_adapter("other")
    model.train()
    loss_of(model, training_batch(family, task)).backward()
    for name, parameter in encoder_of(model, "other").named_parameters():
        assert parameter.requires_grad and parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    assert all(parameter.grad is None for parameter in encoder_of(model).parameters())


# -- save, reload in a fresh process, resume, export -----------------------------------------------------------
# peft's own save tests (test_save_pretrained[_pickle], test_save_pretrained_selected_adapters[_pickle] of its
# PeftCommonTester), for every method and family, in both formats
with_serializations = pytest.mark.parametrize("safe_serialization", [True, False], ids=["safetensors", "pickle"])


def named_base(family: str, task: str, folder: Path):
    """The tiny base model with a name, as a loaded one has (peft writes it into the model card): its config saved
    in ``folder`` (a local folder, so that peft does not look the name up on the Hub)."""
    base = make_tiny(family, task)
    base.config.save_pretrained(folder)
    base.config._name_or_path = base.name_or_path = str(folder)
    return base


def save_as_peft_does(model, folder: Path, safe_serialization: bool, **kwargs) -> None:
    """``save_pretrained`` in the chosen format; the pickle format warns that safetensors is the safe default."""
    if safe_serialization:
        model.save_pretrained(folder, **kwargs)
        return
    with pytest.warns(UserWarning, match="adapter_model.bin, a pickle.*safetensors .*is the safe format"):
        model.save_pretrained(folder, safe_serialization=False, **kwargs)


def assert_saved_as_peft_does(folder: Path, model, safe_serialization: bool, card: bool = True) -> None:
    """The files peft's tests expect: the weights in the chosen format (and no other), the adapter config with the
    base model's name, a model card (``card``: in the top folder) that names peft and the base model; no
    base-model files."""
    import yaml

    weights, other = (ADAPTER_FILE, "adapter_model.bin")[:: 1 if safe_serialization else -1]
    names = {path.name for path in folder.iterdir()}
    assert {weights, "adapter_config.json"} <= names and other not in names
    assert not names & {"model.safetensors", "config.json"}
    name = model.get_base_model().config._name_or_path
    assert json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"] == name
    if card:
        text = (folder / "README.md").read_text()
        metadata = yaml.safe_load(re.search(r"---\n(.*?)\n---", text, re.DOTALL).group(1))
        assert metadata["library_name"] == "peft" and metadata["base_model"] == name


def assert_same_state(model, loaded) -> None:
    expected, actual = model.state_dict(), loaded.state_dict()
    assert actual.keys() == expected.keys()
    for key, tensor in expected.items():
        assert torch.equal(actual[key], tensor), key


@with_serializations
@with_methods
@with_main_cases
def test_save_pretrained_as_peft_tests_it(method, family, task, safe_serialization, tmp_path):
    model = build(method, family, task, base=named_base(family, task, tmp_path / "base"))
    save_as_peft_does(model, tmp_path / "adapter", safe_serialization)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = PeftModel.from_pretrained(named_base(family, task, tmp_path / "base"), tmp_path / "adapter")
    assert not [w for w in caught if "Found missing adapter keys" in str(w.message)]
    assert_same_state(model, loaded)
    assert_saved_as_peft_does(tmp_path / "adapter", model, safe_serialization)


@with_serializations
@with_methods
@with_main_cases
def test_save_pretrained_selected_adapters_as_peft_tests_it(method, family, task, safe_serialization, tmp_path):
    config_cls, kwargs = method
    base_folder = tmp_path / "base"
    model = build(method, family, task, base=named_base(family, task, base_folder))
    model.add_adapter("new_adapter", config_cls(task_type=task, **kwargs))
    perturb(model, seed=9, adapter_name="new_adapter")
    save_as_peft_does(model, tmp_path / "both", safe_serialization)
    loaded = PeftModel.from_pretrained(named_base(family, task, base_folder), tmp_path / "both")
    loaded.load_adapter(tmp_path / "both" / "new_adapter", "new_adapter")
    assert_same_state(model, loaded)
    assert_saved_as_peft_does(tmp_path / "both", model, safe_serialization)
    assert_saved_as_peft_does(tmp_path / "both" / "new_adapter", model, safe_serialization, card=False)

    model.save_pretrained(tmp_path / "selected", selected_adapters=["default"])
    loaded = PeftModel.from_pretrained(named_base(family, task, base_folder), tmp_path / "selected")
    assert set(loaded.peft_config) == {"default"}
    assert not (tmp_path / "selected" / "new_adapter").exists()


@with_methods
@with_all_cases
def test_save_and_reload_in_fresh_process(method, family, task, saved):
    key = saved.key(method, family, task)
    model, folder = saved.models[key], saved.adapter(key)
    encoder = encoder_of(model)
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["peft_type"] == model.peft_config["default"].peft_type.value
    stored = {
        name.removeprefix("base_model.").split("prompt_encoder.", 1)[-1] for name in load_file(folder / ADAPTER_FILE)
    }
    assert set(encoder.state_dict()) | {"prompt_embeddings"} <= stored  # the whole state, and the final table

    reloaded = saved.reloaded.result(folder)
    assert reloaded["encoder"] == type(encoder).__name__ and reloaded["inference_mode"]
    assert reloaded["state"].keys() == encoder.state_dict().keys()
    for name, tensor in encoder.state_dict().items():
        assert torch.equal(reloaded["state"][name], tensor), name
    assert_same_outputs(reloaded, saved.reference[key])


@with_methods
@with_all_cases
def test_resume_training_is_bit_exact(method, family, task, saved):
    """``is_trainable=True`` reloads every trainable tensor as trainable; one step after resuming equals the next
    step of the run that saved the adapter."""
    key = saved.key(method, family, task)
    original = copy.deepcopy(saved.models[key])
    trainable_before = {name: p.detach().clone() for name, p in original.named_parameters() if p.requires_grad}
    resumed = PeftModel.from_pretrained(make_tiny(family, task), saved.adapter(key), is_trainable=True)
    assert not resumed.peft_config["default"].inference_mode
    trainable = {name: p for name, p in resumed.named_parameters() if p.requires_grad}
    assert set(trainable) == set(trainable_before)  # the prompt parameters (and a classification head)
    for name, parameter in trainable.items():
        assert torch.equal(parameter, trainable_before[name]), name
    assert all(not buffer.requires_grad for buffer in encoder_of(resumed).buffers())

    batch = training_batch(family, task)
    sgd_step(original, batch)
    sgd_step(resumed, batch)
    continued = dict(original.named_parameters())
    for name, parameter in trainable.items():
        assert torch.equal(parameter, continued[name]), name  # same inputs, same ops: bit-exact
        assert not torch.equal(parameter, trainable_before[name]), name


@with_methods
@with_all_cases
def test_export_to_stock_prompt_tuning(method, family, task, saved, tmp_path):
    """Where the method allows it, the export loads with plain peft in a process without peft_superpos and gives
    the same outputs; otherwise it is refused with the reason and writes nothing."""
    key = saved.key(method, family, task)
    model, folder = saved.models[key], saved.export(key)
    if not exportable(model):
        reason = encoder_of(model).not_exportable_reason
        with pytest.raises(ValueError, match=re.escape(reason)):
            export_prompt_tuning(model, tmp_path / "export")
        assert not (tmp_path / "export" / ADAPTER_FILE).exists()
        return
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["peft_type"] == "PROMPT_TUNING" and config["num_virtual_tokens"] == N
    tensors = load_file(folder / ADAPTER_FILE)
    assert tensors["prompt_embeddings"].shape == (N, HIDDEN)
    assert torch.equal(tensors["prompt_embeddings"], saved.tables[key])
    # besides the table, exactly what peft saved outside the prompt encoder (a classification head), unchanged
    adapter = load_file(saved.adapter(key) / ADAPTER_FILE)
    others = {name: value for name, value in adapter.items() if name.startswith("base_model.")}
    assert bool(others) == (task in CLASSIFICATION_TASKS)
    assert set(tensors) == {"prompt_embeddings", *others}
    for name, value in others.items():
        assert torch.equal(tensors[name], value), name
    assert not [path for path in folder.iterdir() if path.name.startswith(".")]
    exported = saved.exported.result(folder)
    assert exported["peft_type"] == "PROMPT_TUNING"
    assert_same_outputs(exported, saved.reference[key])


@with_methods
def test_reloaded_adapter_saves_and_exports_the_same(method, saved, tmp_path):
    """A loaded (inference-mode) adapter re-saves (and exports) the table and state it was loaded with."""
    key = saved.key(method, "llama", "CAUSAL_LM")
    loaded = PeftModel.from_pretrained(make_tiny("llama"), saved.adapter(key))
    loaded.save_pretrained(tmp_path / "again")
    pairs = [(saved.adapter(key), tmp_path / "again")]
    if exportable(loaded):
        export_prompt_tuning(loaded, tmp_path / "export_again")
        pairs.append((saved.export(key), tmp_path / "export_again"))
    for first, second in pairs:
        a, b = load_file(first / ADAPTER_FILE), load_file(second / ADAPTER_FILE)
        assert a.keys() == b.keys()
        for name in a:
            assert torch.equal(a[name], b[name]), (second.name, name)
