"""Prompts start at the embedding scale the model sees: Gemma, Gemma 3 and mBART (``scale_embedding=True``)
multiply the embedding rows by sqrt(d) inside the embedding module's forward, and peft prepends the prompt to that
output. Adapters of models that do not scale are unchanged (an adapter file written by v0.1.0 still loads
bit-exact and gives the same logits)."""

from __future__ import annotations

import math

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from tiny_models import (
    FIXTURE_DATA,
    HIDDEN,
    SCALED_EMBEDDING_FAMILIES,
    batch_logits,
    config_builds,
    default_task,
    make_peft,
    make_superpos,
    make_tiny,
    method_id,
    perturb,
    prompt_methods,
)

from peft_superpos import SuperPosPromptConfig, export_prompt_tuning

LEGACY_ADAPTERS = FIXTURE_DATA.parent / "adapters" / "v0.1.0-llama"
SCALED = [
    pytest.param(
        family, marks=pytest.mark.skipif(not config_builds(family), reason="this transformers cannot build it")
    )
    for family in SCALED_EMBEDDING_FAMILIES
]


def seen_embeddings(model, ids: torch.Tensor) -> torch.Tensor:
    """What the model's embedding module gives for ``ids`` ``(k,)``: ``(k, d)`` fp32."""
    with torch.no_grad():
        return model.get_input_embeddings()(ids).float()


@pytest.mark.parametrize("family", SCALED)
def test_tiny_families_scale_their_embeddings(family):
    model = make_tiny(family)
    ids = torch.arange(3, 10)
    raw = model.get_input_embeddings().weight[ids].detach()
    assert torch.allclose(seen_embeddings(model, ids), raw * math.sqrt(HIDDEN), rtol=1e-5), family


@pytest.mark.parametrize("family", SCALED)
def test_frozen_embeddings_are_what_the_model_sees(family):
    model = make_superpos(family)
    encoder = model.prompt_encoder["default"]
    assert torch.equal(encoder.frozen_embeddings, seen_embeddings(model.get_base_model(), encoder.token_ids))


@pytest.mark.parametrize("family", SCALED)
def test_one_hot_prompt_is_the_token_as_the_model_sees_it(family):
    model = make_superpos(family, weight_init="one_hot")
    encoder = model.prompt_encoder["default"]
    expected = seen_embeddings(model.get_base_model(), encoder.token_ids[: encoder.num_tokens])
    assert torch.equal(encoder.final_table(), expected)


@pytest.mark.parametrize("family", SCALED)
@pytest.mark.parametrize("weight_init", ["normal", "uniform"])
def test_superpos_table_starts_at_a_token_norm(family, weight_init):
    model = make_superpos(family, weight_init=weight_init, m=64)
    token_norm = seen_embeddings(model.get_base_model(), torch.arange(3, 128)).norm(dim=-1).mean()
    table_norm = model.prompt_encoder["default"].final_table().norm(dim=-1).mean()
    assert 0.5 < float(table_norm / token_norm) < 2, (family, float(table_norm), float(token_norm))


@pytest.mark.parametrize("family", SCALED)
def test_vocabulary_initialised_prompts_are_seen_tokens(family):
    """Residual's and DePT's initial prompt rows are tokens as the model sees them."""
    vocabulary = seen_embeddings(make_tiny(family), torch.arange(128))
    for config_cls, kwargs in prompt_methods():
        if config_cls is SuperPosPromptConfig:
            continue
        model = make_peft(family, default_task(family), config_cls, **kwargs)
        encoder = model.prompt_encoder["default"]
        rows = (encoder.prompt if hasattr(encoder, "prompt") else encoder.soft_prompt).detach()
        assert all(bool((vocabulary == row).all(dim=-1).any()) for row in rows), method_id(config_cls)


@pytest.mark.parametrize("family", SCALED)
def test_scaled_save_reload_and_export_give_identical_logits(family, tmp_path):
    task = default_task(family)
    model = make_superpos(family)
    perturb(model)
    expected = batch_logits(model, family, task)
    model.save_pretrained(tmp_path / "adapter")
    export_prompt_tuning(model, tmp_path / "exported")
    for folder in ("adapter", "exported"):
        reloaded = PeftModel.from_pretrained(make_tiny(family), tmp_path / folder)
        assert torch.equal(batch_logits(reloaded, family, task), expected), folder


@pytest.mark.parametrize(("config_cls", "kwargs"), prompt_methods(), ids=lambda v: getattr(v, "__name__", ""))
def test_adapters_saved_by_v0_1_0_load_bit_exact(config_cls, kwargs):
    """On a model that does not scale its embeddings (llama) nothing changed: an adapter written by v0.1.0 (before
    embeddings were read through the module) loads bit for bit and gives the logits recorded then. The logits were
    recorded on another CPU, whose kernels round the last bits differently (up to 1e-7 here), hence the 1e-6."""
    name = method_id(config_cls)
    model = PeftModel.from_pretrained(make_tiny("llama"), LEGACY_ADAPTERS / name)
    expected = load_file(LEGACY_ADAPTERS / "expected_logits.safetensors")[name]
    torch.testing.assert_close(batch_logits(model, "llama"), expected, rtol=0, atol=1e-6)
    saved = load_file(LEGACY_ADAPTERS / name / "adapter_model.safetensors")
    loaded = model.prompt_encoder["default"].state_dict()
    shared = saved.keys() & loaded.keys()  # the file also holds the final table, for stock peft
    assert shared and all(torch.equal(loaded[k], saved[k].to(loaded[k].dtype)) for k in shared), name
    fresh = make_peft("llama", "CAUSAL_LM", config_cls, **kwargs)  # the same sampled ids and E_freeze as then
    for key, buffer in fresh.prompt_encoder["default"].named_buffers():
        assert torch.equal(buffer, saved[key].to(buffer.dtype)), (name, key)
