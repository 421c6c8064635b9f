"""Residual Prompt Tuning as a registered PEFT method: the residual formula, forward/backward, generate,
save/reload in a fresh process, resume, export to stock prompt tuning, config errors."""

from __future__ import annotations

import pytest
import torch
from conftest import fresh_reload
from peft import PeftModel, get_peft_model
from tiny_models import SPECIAL_IDS, make_tiny, tiny_batch

from peft_superpos import ResidualPromptConfig, ResidualPromptEmbedding, export_prompt_tuning

N, BOTTLENECK = 4, 8
CASES = [("llama", "CAUSAL_LM"), ("t5", "SEQ_2_SEQ_LM")]


def make_residual(family: str, task: str, **overrides):
    config = ResidualPromptConfig(task_type=task, num_virtual_tokens=N, bottleneck_size=BOTTLENECK, **overrides)
    model = get_peft_model(make_tiny(family, task), config)
    return model, model.prompt_encoder["default"]


def perturb(encoder, scale: float = 0.05) -> None:
    """Move every parameter off its init, as training would (LayerNorm 1/0 and zero-free biases included)."""
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for parameter in encoder.parameters():
            parameter.add_(scale * torch.randn(parameter.shape, generator=generator))


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
    perturb(encoder)
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


# -- stock peft paths ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("family, task", CASES)
def test_forward_backward_generate(family, task):
    model, _ = make_residual(family, task)
    input_ids, mask = tiny_batch(family, length=6)
    model.train()
    model(input_ids=input_ids, attention_mask=mask, labels=input_ids).loss.backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    names = sorted(n.rsplit(".", 1)[1] for n, _ in trainable)
    assert names == ["down_bias", "down_weight", "norm_bias", "norm_weight", "prompt", "up_bias", "up_weight"]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for _, p in trainable)
    model.eval()
    with torch.no_grad():
        first = model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=3)
        second = model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=3)
    assert torch.equal(first, second) and first.shape[0] == 2


def test_export_matches_the_adapter(tmp_path):
    model, encoder = make_residual("llama", "CAUSAL_LM")
    perturb(encoder)
    model.eval()
    input_ids, mask = tiny_batch("llama", length=6)
    export_prompt_tuning(model, tmp_path / "stock")
    stock = PeftModel.from_pretrained(make_tiny("llama", "CAUSAL_LM"), str(tmp_path / "stock")).eval()
    assert stock.peft_config["default"].peft_type.value == "PROMPT_TUNING"
    with torch.no_grad():
        torch.testing.assert_close(stock.prompt_encoder["default"].embedding.weight, encoder.table(), rtol=0, atol=0)
        ours = model(input_ids=input_ids, attention_mask=mask).logits
        torch.testing.assert_close(stock(input_ids=input_ids, attention_mask=mask).logits, ours, rtol=0, atol=0)


# -- save, reload in a fresh process, resume -------------------------------------------------------------------
def trained_residual(family: str, task: str):
    model, encoder = make_residual(family, task, separate_mlps=family == "t5")
    perturb(encoder)
    return model


@pytest.fixture(scope="module", autouse=True)
def saved_adapters(tmp_path_factory):
    """Save trained-looking adapters and start reloading them in a fresh process at once, so that the child's
    start-up overlaps the other tests of this file; the last test collects its logits."""
    tmp_path = tmp_path_factory.mktemp("residual_reload")
    with fresh_reload(trained_residual, CASES, tmp_path, "reload_residual") as saved:
        yield saved


def test_save_reload_in_fresh_process_and_resume(saved_adapters):
    for family, resumed, saved, loaded in saved_adapters.resumed():  # resume here while the child runs
        assert saved.keys() == loaded.keys() and len(saved) == 7
        assert resumed.peft_config["default"].separate_mlps == (family == "t5")
    saved_adapters.check_child()
