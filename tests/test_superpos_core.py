"""SuperPos-Prompt on tiny random models of every supported architecture: parameters, gradients, the
prompt-table formula, vocabulary sampling, caching, generation, padding, inputs_embeds, gradient
checkpointing and bad configurations."""

from __future__ import annotations

import pytest
import torch
from tiny_models import (
    ALL_FAMILIES,
    CAUSAL_FAMILIES,
    HIDDEN,
    SEQ2SEQ_FAMILIES,
    SPECIAL_IDS,
    VOCAB,
    default_task,
    labels_for,
    make_superpos,
    make_tiny,
    tiny_batch,
)

import peft_superpos  # noqa: F401  (registers the method)
from peft_superpos import SuperPosPromptConfig, SuperPosPromptEmbedding

N, M = 4, 16

# (family, task type): every family with its main task, plus the other encoder-only tasks
CASES = [(family, default_task(family)) for family in ALL_FAMILIES] + [
    ("bert", "TOKEN_CLS"),
    ("roberta", "TOKEN_CLS"),
    ("bert", "FEATURE_EXTRACTION"),
    ("roberta", "FEATURE_EXTRACTION"),
]
CASE_IDS = [f"{family}-{task}" for family, task in CASES]


def encoder_of(peft_model) -> SuperPosPromptEmbedding:
    return peft_model.prompt_encoder["default"]


def model_inputs(task, input_ids, attention_mask, with_labels=True):
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
    labels = labels_for(task, input_ids, attention_mask) if with_labels else None
    if labels is not None:
        inputs["labels"] = labels
    return inputs


def scalar_loss(task, output) -> torch.Tensor:
    if getattr(output, "loss", None) is not None:
        return output.loss
    return output.last_hidden_state.pow(2).mean()  # FEATURE_EXTRACTION has no head and no loss


def main_output(output) -> torch.Tensor:
    return output.logits if getattr(output, "logits", None) is not None else output.last_hidden_state


def head_parameter_count(family, task) -> int:
    """What peft makes trainable besides the prompt: the classification head for SEQ_CLS / TOKEN_CLS
    (wrapped as ``modules_to_save``), nothing otherwise."""
    if task not in ("SEQ_CLS", "TOKEN_CLS"):
        return 0
    base = make_tiny(family, task)
    return sum(p.numel() for p in base.classifier.parameters())


def randomize_delta(encoder, seed=5, scale=0.05):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        encoder.delta.copy_(torch.randn(encoder.delta.shape, generator=generator) * scale)


# -- parameters, gradients, optimizer step ------------------------------------------------------------
@pytest.mark.parametrize(("family", "task"), CASES, ids=CASE_IDS)
def test_forward_backward_trainable_state(family, task):
    model = make_superpos(family, task)
    encoder = encoder_of(model)
    frozen_before = encoder.frozen_embeddings.clone()
    base_before = {name: p.detach().clone() for name, p in model.get_base_model().named_parameters()}

    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    prompt_names = {"prompt_encoder.default.delta", "prompt_encoder.default.weights"}
    assert prompt_names <= set(trainable)
    others = set(trainable) - prompt_names
    if task in ("SEQ_CLS", "TOKEN_CLS"):
        assert others and all(".classifier.modules_to_save.default." in name for name in others), others
    else:
        assert not others, others
    expected = N * M * HIDDEN + N * M + head_parameter_count(family, task)
    assert sum(p.numel() for p in trainable.values()) == expected
    assert model.get_nb_trainable_parameters()[0] == expected

    # E_freeze is a buffer, never a parameter
    assert "frozen_embeddings" in dict(encoder.named_buffers())
    assert all(p is not encoder.frozen_embeddings for p in model.parameters())
    assert not encoder.frozen_embeddings.requires_grad

    model.train()
    input_ids, attention_mask = tiny_batch(family)
    inputs = model_inputs(task, input_ids, attention_mask)
    output = model(**inputs)
    assert main_output(output).shape[0] == 2
    if task == "TOKEN_CLS":  # one output per prompt position and token; the prompt positions carry no loss
        logits = output.logits
        assert logits.shape[:2] == (2, N + input_ids.shape[1])
        token_logits = logits[:, N:].flatten(0, 1)
        expected_loss = torch.nn.functional.cross_entropy(token_logits, inputs["labels"].flatten())
        torch.testing.assert_close(output.loss, expected_loss)
    scalar_loss(task, output).backward()
    for name, parameter in trainable.items():
        assert parameter.grad is not None, name
        assert torch.isfinite(parameter.grad).all(), name
        assert parameter.grad.abs().sum() > 0, name
    assert encoder.frozen_embeddings.grad is None

    delta_before, weights_before = encoder.delta.detach().clone(), encoder.weights.detach().clone()
    torch.optim.AdamW(trainable.values(), lr=1e-2, weight_decay=0.1).step()
    assert not torch.equal(encoder.delta, delta_before)
    assert not torch.equal(encoder.weights, weights_before)
    assert torch.equal(encoder.frozen_embeddings, frozen_before)
    for name, parameter in model.get_base_model().named_parameters():
        if "modules_to_save" not in name and name in base_before:
            assert torch.equal(parameter, base_before[name]), name


# -- prompt table formula and vocabulary sampling ----------------------------------------------------------
@pytest.mark.parametrize("use_softmax", [False, True], ids=["linear", "softmax"])
@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_prompt_table_formula_and_sampled_ids(family, use_softmax):
    model = make_superpos(family, use_softmax=use_softmax, seed=0)
    encoder = encoder_of(model)
    randomize_delta(encoder)
    assert encoder.delta.abs().sum() > 0

    e_freeze = encoder.frozen_embeddings.double()  # (m, d)
    delta, weights = encoder.delta.detach().double(), encoder.weights.detach().double()
    if use_softmax:
        weights = weights.softmax(dim=-1)
    expected = torch.stack([(e_freeze + delta[i]).T @ weights[i] for i in range(N)])  # p_i = (E + ΔE_i)ᵀ p'_i
    with torch.no_grad():
        table = encoder.table()
    assert table.shape == (N, HIDDEN) and table.dtype == torch.float32
    torch.testing.assert_close(table.double(), expected, rtol=1e-5, atol=1e-6)
    # the prompt the model actually uses is that table, once per batch row
    prompts = model.get_prompt(batch_size=3)
    assert prompts.shape == (3, N, HIDDEN)
    torch.testing.assert_close(prompts, table.expand(3, -1, -1))

    # sampled ids: m unique, no special ids, written into the config, E_freeze = the model's rows
    ids = encoder.token_ids
    assert ids.shape == (M,) and len(set(ids.tolist())) == M
    assert not set(ids.tolist()) & SPECIAL_IDS
    assert all(0 <= i < VOCAB for i in ids.tolist())
    assert model.peft_config["default"].token_ids == ids.tolist()
    embedding_rows = model.get_base_model().get_input_embeddings().weight[ids]
    assert torch.equal(encoder.frozen_embeddings, embedding_rows.detach().float())

    # reproducible from the seed (ids and p' init), and a different seed samples differently
    again = encoder_of(make_superpos(family, use_softmax=use_softmax, seed=0))
    assert torch.equal(again.token_ids, ids)
    assert torch.equal(again.weights, encoder.weights)
    other = encoder_of(make_superpos(family, use_softmax=use_softmax, seed=7))
    assert not torch.equal(other.token_ids, ids)


def test_explicit_token_ids_and_exclusions():
    ids = list(range(40, 40 + M))
    encoder = encoder_of(make_superpos("gpt2", token_ids=ids))
    assert encoder.token_ids.tolist() == ids
    excluded = encoder_of(make_superpos("gpt2", m=VOCAB - 3 - 10, exclude_token_ids=list(range(3, 13))))
    assert not set(excluded.token_ids.tolist()) & (SPECIAL_IDS | set(range(3, 13)))
    small = encoder_of(make_superpos("gpt2", m=8, sample_vocab_size=20))
    assert max(small.token_ids.tolist()) < 20


@pytest.mark.parametrize("init", ["normal", "uniform", "one_hot"])
def test_weight_init(init):
    encoder = encoder_of(make_superpos("llama", weight_init=init))
    if init == "one_hot":
        assert torch.equal(encoder.weights, torch.eye(N, M))
        with torch.no_grad():
            assert torch.equal(encoder.table(), encoder.frozen_embeddings[:N])
    else:
        assert encoder.weights.abs().max() > 0
        assert len({tuple(row.tolist()) for row in encoder.weights}) == N  # every prompt token differs


@pytest.mark.parametrize("family", ["gpt2", "t5", "bert"])
def test_config_in_inference_mode_uses_the_prompt(family):
    """peft reads ``embedding.weight`` directly when ``inference_mode`` is set: it must hold the table."""
    task = default_task(family)
    input_ids, attention_mask = tiny_batch(family)
    extra = {"decoder_input_ids": input_ids[:, :2]} if task == "SEQ_2_SEQ_LM" else {}
    with torch.no_grad():
        reference = make_superpos(family)
        expected = main_output(reference(input_ids=input_ids, attention_mask=attention_mask, **extra))
        model = make_superpos(family, inference_mode=True)
        assert model.peft_config["default"].inference_mode
        assert torch.equal(encoder_of(model).embedding.weight, encoder_of(model).table())
        actual = main_output(model(input_ids=input_ids, attention_mask=attention_mask, **extra))
    assert torch.equal(actual, expected)


@pytest.mark.parametrize("family", ["llama", "t5"])
def test_bf16_base_model(family):
    task = default_task(family)
    model = make_superpos(family, task, base=make_tiny(family, task, dtype=torch.bfloat16))
    encoder = encoder_of(model)
    assert encoder.frozen_embeddings.dtype == torch.float32 and encoder.delta.dtype == torch.float32
    rows = model.get_base_model().get_input_embeddings().weight[encoder.token_ids]
    assert torch.equal(encoder.frozen_embeddings, rows.detach().float())
    assert model.get_prompt(batch_size=2).dtype == torch.bfloat16
    model.train()
    input_ids, attention_mask = tiny_batch(family)
    output = model(**model_inputs(task, input_ids, attention_mask))
    assert output.logits.dtype == torch.bfloat16
    output.loss.backward()
    assert encoder.delta.grad is not None and encoder.delta.grad.abs().sum() > 0
    assert encoder.weights.grad is not None and encoder.weights.grad.abs().sum() > 0


# -- generation ---------------------------------------------------------------------------------------------
def new_tokens(model, input_ids, attention_mask, steps=5):
    with torch.no_grad():
        return model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=steps)


@pytest.mark.parametrize("pad_side", ["left", "right"])
@pytest.mark.parametrize("family", CAUSAL_FAMILIES)
def test_generate_causal(family, pad_side):
    model = make_superpos(family)
    randomize_delta(encoder_of(model))
    input_ids, attention_mask = tiny_batch(family, pad_side=pad_side)
    out = new_tokens(model, input_ids, attention_mask)
    length = input_ids.shape[1]
    assert out.shape == (2, length + 5)
    assert torch.equal(out[:, :length], input_ids)
    # the unpadded row does not depend on its neighbour
    assert torch.equal(out[:1], new_tokens(model, input_ids[:1], attention_mask[:1]))
    if pad_side == "left":  # the correct padding side for decoder-only generation: padding changes nothing
        keep = attention_mask[1].bool()
        alone = new_tokens(model, input_ids[1:, keep], attention_mask[1:, keep])
        assert torch.equal(out[1, length:], alone[0, keep.sum() :])
    # the prompt is used: a different prompt gives different logits for the same input
    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
        with model.disable_adapter():
            plain = model(input_ids=input_ids, attention_mask=attention_mask).logits
    assert logits.shape[1] == N + length and plain.shape[1] == length
    assert not torch.allclose(logits[:, N:], plain)


@pytest.mark.parametrize("family", SEQ2SEQ_FAMILIES)
def test_generate_seq2seq(family):
    model = make_superpos(family)
    randomize_delta(encoder_of(model))
    input_ids, attention_mask = tiny_batch(family, pad_side="right")
    out = new_tokens(model, input_ids, attention_mask)
    assert out.shape[0] == 2 and 2 <= out.shape[1] <= 6
    keep = attention_mask[1].bool()
    alone = new_tokens(model, input_ids[1:, keep], attention_mask[1:, keep])
    assert torch.equal(out[1, : alone.shape[1]], alone[0])
    first_alone = new_tokens(model, input_ids[:1], attention_mask[:1])
    assert torch.equal(out[:1], first_alone[:, : out.shape[1]])
    # generation uses the prompt: it matches a forward pass on the generated prefix
    with torch.no_grad():
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "decoder_input_ids": out[:, :-1]}
        logits = model(**inputs).logits
    assert torch.equal(logits.argmax(-1)[0], out[0, 1:])


# -- padding, inputs_embeds, gradient checkpointing ----------------------------------------------------------
@pytest.mark.parametrize(("family", "task"), CASES, ids=CASE_IDS)
def test_padding_and_inputs_embeds(family, task):
    model = make_superpos(family, task)
    randomize_delta(encoder_of(model))
    input_ids, attention_mask = tiny_batch(family, pad_side="right")
    extra = {}
    if task == "SEQ_2_SEQ_LM":
        extra["decoder_input_ids"] = torch.full((2, 3), model.get_base_model().config.decoder_start_token_id)
    with torch.no_grad():
        batched = main_output(model(input_ids=input_ids, attention_mask=attention_mask, **extra))
        embeds = model.get_base_model().get_input_embeddings()(input_ids)
        from_embeds = main_output(model(inputs_embeds=embeds, attention_mask=attention_mask, **extra))
        keep = attention_mask[1].bool()
        alone_extra = {k: v[1:] for k, v in extra.items()}
        alone = main_output(
            model(input_ids=input_ids[1:, keep], attention_mask=attention_mask[1:, keep], **alone_extra)
        )
    torch.testing.assert_close(from_embeds, batched, rtol=0, atol=0)
    # the padded row gives the outputs it gives alone
    if task == "SEQ_CLS":
        torch.testing.assert_close(batched[1:], alone, rtol=1e-4, atol=1e-5)
    elif task == "SEQ_2_SEQ_LM":
        torch.testing.assert_close(batched[1:], alone, rtol=1e-4, atol=1e-5)
    else:  # per-token outputs: n prompt positions, then the real tokens
        real = N + int(keep.sum())
        torch.testing.assert_close(batched[1:, :real], alone, rtol=1e-4, atol=1e-5)


@pytest.mark.filterwarnings("ignore:`gradient_checkpointing_enable` is deprecated:FutureWarning")
@pytest.mark.parametrize("family", ["gpt2", "llama", "t5", "bart", "bert"])
def test_gradient_checkpointing(family):
    task = default_task(family)
    base = make_tiny(family, task)
    base.gradient_checkpointing_enable()
    model = make_superpos(family, task, base=base)
    model.train()
    base = model.get_base_model()
    assert getattr(base, "is_activation_checkpointing", None) or base.is_gradient_checkpointing
    input_ids, attention_mask = tiny_batch(family)
    output = model(**model_inputs(task, input_ids, attention_mask))
    output.loss.backward()
    encoder = encoder_of(model)
    for parameter in (encoder.delta, encoder.weights):
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0

    # the same gradients as without checkpointing
    reference = make_superpos(family, task)
    reference.train()
    reference(**model_inputs(task, input_ids, attention_mask)).loss.backward()
    torch.testing.assert_close(encoder.delta.grad, encoder_of(reference).delta.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(encoder.weights.grad, encoder_of(reference).weights.grad, rtol=1e-4, atol=1e-6)


# -- bad configurations -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"m": 0}, "m must be a positive int"),
        ({"m": -3}, "m must be a positive int"),
        ({"num_virtual_tokens": 0}, "num_virtual_tokens must be a positive int"),
        ({"num_virtual_tokens": -1}, "num_virtual_tokens must be a positive int"),
        ({"m": 3, "token_ids": [5, 6]}, r"2 token_ids were given but m=3"),
        ({"m": 3, "token_ids": [5, 6, 5]}, r"token_ids must be unique; repeated: \[5\]"),
        ({"m": 2, "token_ids": [5, -1]}, "token_ids must be >= 0"),
        ({"weight_init": "zeros"}, "weight_init must be one of"),
        (
            {"weight_init": "one_hot", "num_virtual_tokens": 20, "m": 10},
            r"needs num_virtual_tokens \(20\) <= m",
        ),
        ({"num_transformer_submodules": 2}, "num_transformer_submodules must be 1"),
    ],
)
def test_bad_config_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SuperPosPromptConfig(task_type="CAUSAL_LM", **kwargs)


def test_m_larger_than_usable_vocabulary():
    usable = VOCAB - len(SPECIAL_IDS)  # gpt2 tiny config names pad/bos/eos
    assert encoder_of(make_superpos("gpt2", m=usable)).token_ids.numel() == usable
    message = rf"m={usable + 1} is larger than the usable vocabulary \({usable} ids"
    with pytest.raises(ValueError, match=message):
        make_superpos("gpt2", m=usable + 1)
    with pytest.raises(ValueError, match="larger than the usable vocabulary"):
        make_superpos("t5", m=VOCAB * 2)


def test_token_ids_outside_the_vocabulary():
    message = rf"token_ids \[{VOCAB}, 500\] are outside the embedding table of {VOCAB}"
    with pytest.raises(ValueError, match=message):
        make_superpos("llama", m=4, token_ids=[3, 4, VOCAB, 500])
