"""SuperPos-Prompt's own behaviour on tiny random models: its parameters, the prompt-table formula, vocabulary
sampling, weight init, caching and bad configurations. What every method shares (gradients, generation, padding,
gradient checkpointing, half precision, ...) is in test_methods_common.py."""

from __future__ import annotations

import pytest
import torch
from tiny_models import ALL_FAMILIES, FAMILY_TASKS, HIDDEN, SPECIAL_IDS, VOCAB, make_superpos, make_tiny

import peft_superpos  # noqa: F401  (registers the method)
from peft_superpos import SuperPosPromptConfig, SuperPosPromptEmbedding

N, M = 4, 16


def encoder_of(peft_model) -> SuperPosPromptEmbedding:
    return peft_model.prompt_encoder["default"]


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


# -- parameters -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("family", "task"), FAMILY_TASKS, ids=[f"{family}-{task}" for family, task in FAMILY_TASKS])
def test_trainable_parameters_are_delta_and_weights(family, task):
    """ΔE and p' (n·m·d + n·m values) plus a classification head; E_freeze is a buffer. (Gradients, the optimizer
    step and everything else every method shares: test_methods_common.py.)"""
    model = make_superpos(family, task)
    encoder = encoder_of(model)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    prompt_names = {"prompt_encoder.default.delta", "prompt_encoder.default.weights"}
    assert {name for name in trainable if "prompt_encoder" in name} == prompt_names
    expected = N * M * HIDDEN + N * M + head_parameter_count(family, task)
    assert model.get_nb_trainable_parameters()[0] == expected
    assert "frozen_embeddings" in dict(encoder.named_buffers())


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


@pytest.mark.parametrize("family", ["llama", "t5"])
def test_bf16_base_model_keeps_fp32_frozen_embeddings(family):
    model = make_superpos(family, base=make_tiny(family, dtype=torch.bfloat16))
    encoder = encoder_of(model)
    assert encoder.frozen_embeddings.dtype == torch.float32
    rows = model.get_base_model().get_input_embeddings().weight[encoder.token_ids]
    assert torch.equal(encoder.frozen_embeddings, rows.detach().float())


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
