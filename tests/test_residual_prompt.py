"""Residual Prompt Tuning's own behaviour: the residual formula, its initialisation, MLP dropout, its parameters and
config errors. What every method shares is in test_methods_common.py."""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel, get_peft_model
from tiny_models import SPECIAL_IDS, make_tiny, perturb

from peft_superpos import ResidualPromptConfig, ResidualPromptEmbedding

N, BOTTLENECK = 4, 8


def make_residual(family: str, task: str, **overrides):
    config = ResidualPromptConfig(task_type=task, num_virtual_tokens=N, bottleneck_size=BOTTLENECK, **overrides)
    model = get_peft_model(make_tiny(family, task), config)
    return model, model.prompt_encoder["default"]


def reference_table(encoder, token: int | None = None) -> torch.Tensor:
    """P + LN(W2 ReLU(W1 P + b1) + b2) with torch's own layers, row by row."""
    rows = []
    for i, p in enumerate(encoder.prompt):
        k = i if encoder.down_weight.shape[0] > 1 else 0
        hidden = torch.relu(p @ encoder.down_weight[k] + encoder.down_bias[k])
        out = hidden @ encoder.up_weight[k] + encoder.up_bias[k]
        if encoder.use_layer_norm:
            out = torch.nn.functional.layer_norm(out, out.shape, encoder.norm_weight[k], encoder.norm_bias[k])
        rows.append(p + out)
    return torch.stack(rows)


# -- config --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "field, value", [("bottleneck_size", 0), ("bottleneck_size", -3), ("num_virtual_tokens", 0), ("mlp_dropout", 1.0)]
)
def test_bad_config_values_raise(field, value):
    with pytest.raises(ValueError, match=field):
        ResidualPromptConfig(task_type="CAUSAL_LM", **{field: value})


def test_defaults_and_submodules():
    config = ResidualPromptConfig(task_type="CAUSAL_LM")
    assert (config.bottleneck_size, config.use_layer_norm, config.separate_mlps) == (128, True, False)
    assert config.peft_type.value == "RESIDUAL_PROMPT"
    with pytest.raises(ValueError, match="num_transformer_submodules"):
        ResidualPromptConfig(task_type="SEQ_2_SEQ_LM", num_transformer_submodules=2)


# -- the reparameterisation ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "overrides", [{}, {"separate_mlps": True}, {"use_layer_norm": False}], ids=["shared", "separate", "no_ln"]
)
def test_table_is_prompt_plus_normalised_mlp(overrides):
    model, encoder = make_residual("llama", "CAUSAL_LM", **overrides)
    assert isinstance(encoder, ResidualPromptEmbedding)
    k = N if overrides.get("separate_mlps") else 1
    assert encoder.down_weight.shape == (k, 32, BOTTLENECK) and encoder.up_weight.shape == (k, BOTTLENECK, 32)
    assert hasattr(encoder, "norm_weight") == overrides.get("use_layer_norm", True)
    perturb(model)
    with torch.no_grad():
        torch.testing.assert_close(encoder.table(), reference_table(encoder), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(model.get_prompt(2)[1], reference_table(encoder), rtol=1e-5, atol=1e-6)


def test_prompt_starts_from_sampled_vocabulary():
    _, encoder = make_residual("llama", "CAUSAL_LM")
    _, again = make_residual("llama", "CAUSAL_LM")
    embeddings = make_tiny("llama").get_input_embeddings().weight
    matches = [(row == embeddings).all(dim=1).nonzero().flatten().tolist() for row in encoder.prompt]
    ids = [m[0] for m in matches]
    assert all(len(m) == 1 for m in matches) and len(set(ids)) == N and not set(ids) & SPECIAL_IDS
    assert torch.equal(encoder.prompt, again.prompt) and torch.equal(encoder.down_weight, again.down_weight)
    _, other = make_residual("llama", "CAUSAL_LM", seed=1)
    assert not torch.equal(encoder.prompt, other.prompt)


def test_mlp_dropout_only_while_training_with_autograd():
    model, encoder = make_residual("llama", "CAUSAL_LM", mlp_dropout=0.5)
    clean = reference_table(encoder).detach()
    model.train()
    assert not torch.allclose(encoder.table(), clean)  # a dropout draw
    with torch.no_grad():
        torch.testing.assert_close(encoder.table(), clean)  # cached / saved / exported table: dropout-free
    model.eval()
    torch.testing.assert_close(encoder.table().detach(), clean)


# -- trainable parameters and what the saved adapter keeps ----------------------------------------------------------
def test_trainable_parameters():
    """The prompt and both MLP layers with their LayerNorm. (Gradients, generation, saving, reloading, resuming and
    exporting, which every method shares: test_methods_common.py.)"""
    model, _ = make_residual("llama", "CAUSAL_LM")
    names = sorted(n.rsplit(".", 1)[1] for n, p in model.named_parameters() if p.requires_grad)
    assert names == ["down_bias", "down_weight", "norm_bias", "norm_weight", "prompt", "up_bias", "up_weight"]


def test_separate_mlps_survive_save_and_resume(tmp_path):
    model, encoder = make_residual("t5", "SEQ_2_SEQ_LM", separate_mlps=True)
    perturb(model)
    model.save_pretrained(tmp_path)
    resumed = PeftModel.from_pretrained(make_tiny("t5", "SEQ_2_SEQ_LM"), tmp_path, is_trainable=True)
    assert resumed.peft_config["default"].separate_mlps
    loaded = resumed.prompt_encoder["default"]
    assert loaded.down_weight.shape[0] == N
    with torch.no_grad():
        assert torch.equal(loaded.table(), encoder.table())
