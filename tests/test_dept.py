"""DePT (decomposed prompt tuning)'s own behaviour: creation, config errors, two learning rates, and the embedding
update with its positions in every forward and generate path. What every method shares (gradients, disable_adapter,
saving, reloading, resuming, the refused export, ...) is in test_methods_common.py."""

from __future__ import annotations

import pytest
import torch
from peft import get_peft_model
from tiny_models import EOS, make_tiny, tiny_batch

from peft_superpos import DePTConfig, DePTEmbedding, make_param_groups

N, R, MAX_LENGTH = 3, 2, 12
CASES = [("llama", "CAUSAL_LM"), ("t5", "SEQ_2_SEQ_LM")]


def make_dept(family: str, task: str, **overrides):
    config = DePTConfig(task_type=task, num_virtual_tokens=N, r=R, max_length=MAX_LENGTH, **overrides)
    model = get_peft_model(make_tiny(family, task), config)
    encoder = model.prompt_encoder["default"]
    with torch.no_grad():  # a trained-looking update: B is zero at creation
        generator = torch.Generator().manual_seed(5)
        encoder.lora_embedding_B.copy_(0.1 * torch.randn(encoder.lora_embedding_B.shape, generator=generator))
    return model, encoder


def expected_input_embeds(model, encoder, input_ids):
    """word_emb + (A B)[:L] for an unpadded input, with the prompt in front."""
    with torch.no_grad():
        plain = model.word_embeddings(input_ids)
        update = encoder.lora_embedding_A @ encoder.lora_embedding_B
        prompt = encoder.soft_prompt.expand(input_ids.shape[0], -1, -1)
        return torch.cat((prompt, plain + update[: input_ids.shape[1]]), dim=1)


def capture_kwarg(module, name):
    seen = []
    handle = module.register_forward_pre_hook(lambda m, a, kw: seen.append(kw.get(name)), with_kwargs=True)
    return seen, handle


# -- config --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "field, value",
    [("num_virtual_tokens", 0), ("r", 0), ("r", -1), ("max_length", 0), ("prompt_lr", 0.0), ("lora_lr", -1.0)],
)
def test_bad_config_values_raise(field, value):
    with pytest.raises(ValueError, match=field):
        DePTConfig(task_type="CAUSAL_LM", **{field: value})


def test_bad_overflow_mode_and_submodules_raise():
    with pytest.raises(ValueError, match="beyond_max_length"):
        DePTConfig(task_type="CAUSAL_LM", beyond_max_length="truncate")
    with pytest.raises(ValueError, match="num_transformer_submodules"):
        DePTConfig(task_type="SEQ_2_SEQ_LM", num_transformer_submodules=2)


def test_lr_by_name_gives_two_learning_rates():
    model, _ = make_dept("llama", "CAUSAL_LM", prompt_lr=0.3, lora_lr=1e-4)
    config = model.peft_config["default"]
    for mapping in (config.lr_by_name(), config.lr_by_name("default")):
        groups = make_param_groups(model, 1e-5, lr_by_name=mapping)
        lr_of = {id(p): g.get("lr") for g in groups for p in g["params"]}
        encoder = model.prompt_encoder["default"]
        assert lr_of[id(encoder.soft_prompt)] == 0.3
        assert lr_of[id(encoder.lora_embedding_A)] == lr_of[id(encoder.lora_embedding_B)] == 1e-4
        assert sum(len(g["params"]) for g in groups) == 3
    assert make_param_groups(model, 0.0, lr_by_name=config.lr_by_name("other"))[0].get("lr") is None


# -- the update itself ---------------------------------------------------------------------------------------
def test_new_adapter_starts_as_plain_prompt_tuning():
    model = get_peft_model(make_tiny("llama", "CAUSAL_LM"), DePTConfig(task_type="CAUSAL_LM", num_virtual_tokens=N))
    encoder = model.prompt_encoder["default"]
    assert isinstance(encoder, DePTEmbedding)
    assert not encoder.lora_embedding_B.any() and encoder.lora_embedding_A.abs().sum() > 0
    embeds = torch.randn(2, 5, encoder.soft_prompt.shape[1])
    assert torch.equal(encoder.adjust_input_embeds(embeds, None), embeds)


def test_positions_follow_the_attention_mask():
    _, encoder = make_dept("llama", "CAUSAL_LM")
    update = encoder.embedding_update().detach()
    embeds = torch.zeros(2, 6, update.shape[1])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1]])
    with torch.no_grad():
        aligned = encoder.adjust_input_embeds(embeds, mask)
        assert torch.equal(aligned[0], update[:6])
        assert torch.equal(aligned[1, 2:], update[:4]) and not aligned[1, :2].any()  # left padding: same rows
        right = encoder.adjust_input_embeds(embeds, mask.flip(1))
        assert torch.equal(right[1, :4], update[:4]) and not right[1, 4:].any()
        encoder.align_to_attention_mask = False
        by_column = encoder.adjust_input_embeds(embeds, mask)
        assert torch.equal(by_column, update[:6].expand(2, -1, -1))


def test_input_longer_than_max_length():
    model, encoder = make_dept("llama", "CAUSAL_LM")
    long_ids = torch.randint(3, 100, (1, MAX_LENGTH + 1))
    with pytest.raises(ValueError, match="max_length"):
        model(input_ids=long_ids)
    with pytest.raises(ValueError, match="max_length"):
        model.generate(input_ids=long_ids, max_new_tokens=1)
    # padding does not count against max_length when positions follow the mask
    padded = torch.cat((torch.zeros(1, 2, dtype=torch.long), long_ids[:, :MAX_LENGTH]), dim=1)
    mask = (padded != 0).long()
    with torch.no_grad():
        model(input_ids=padded, attention_mask=mask)
    encoder.beyond_max_length = "ignore"
    embeds = torch.zeros(1, MAX_LENGTH + 3, encoder.soft_prompt.shape[1])
    with torch.no_grad():
        out = encoder.adjust_input_embeds(embeds, None)
    assert torch.equal(out[0, :MAX_LENGTH], encoder.embedding_update().detach()) and not out[0, MAX_LENGTH:].any()


@pytest.mark.parametrize("family, task", CASES)
def test_forward_and_the_embeddings_the_model_sees(family, task):
    model, encoder = make_dept(family, task)
    input_ids, _ = tiny_batch(family, length=7)
    seen, handle = capture_kwarg(model.get_base_model(), "inputs_embeds")
    model.train()
    model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), labels=input_ids)
    handle.remove()
    torch.testing.assert_close(seen[0], expected_input_embeds(model, encoder, input_ids), rtol=0, atol=1e-6)
    trainable = [n.rsplit(".", 1)[1] for n, p in model.named_parameters() if p.requires_grad]
    assert sorted(trainable) == ["lora_embedding_A", "lora_embedding_B", "soft_prompt"]


def test_causal_generate_updates_only_the_original_input():
    model, encoder = make_dept("llama", "CAUSAL_LM")
    input_ids, _ = tiny_batch("llama", length=5)
    mask = torch.ones_like(input_ids)
    base = model.get_base_model()
    outputs = {}
    for use_cache in (True, False):
        seen, handle = capture_kwarg(base, "inputs_embeds")
        with torch.no_grad():
            outputs[use_cache] = model.generate(
                input_ids=input_ids, attention_mask=mask, max_new_tokens=4, min_new_tokens=4, use_cache=use_cache
            )
        handle.remove()
        expected = expected_input_embeds(model, encoder, input_ids)
        steps = [s for s in seen if s is not None]
        assert len(steps) == (1 if use_cache else 4)
        for step in steps:  # without a cache, every step re-embeds the whole sequence: generated tokens stay plain
            torch.testing.assert_close(step[:, : N + 5], expected, rtol=0, atol=1e-6)
            generated = outputs[use_cache][:, 5 : 5 + step.shape[1] - N - 5]
            torch.testing.assert_close(step[:, N + 5 :], model.word_embeddings(generated), rtol=0, atol=0)
    assert torch.equal(outputs[True], outputs[False])
    # reference: greedy decoding on the base model with hand-built embeddings
    sequence = input_ids
    with torch.no_grad():
        for _ in range(4):
            embeds = torch.cat((expected, model.word_embeddings(sequence[:, 5:])), dim=1)
            logits = base(inputs_embeds=embeds, attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long)).logits
            logits[:, -1, EOS] = -float("inf")  # as min_new_tokens does
            sequence = torch.cat((sequence, logits[:, -1].argmax(-1, keepdim=True)), dim=1)
    assert torch.equal(outputs[True], sequence)


def test_causal_generate_refuses_to_update_generated_tokens(monkeypatch):
    """Without ``_peft_compat.generation``'s patch, peft 0.21 on transformers >= 5.24 misses the KV cache and
    injects the prompt again at every step, embedding only the new token: the update would land on it."""
    from peft import PeftModelForCausalLM

    from peft_superpos._peft_compat import generation, input_embeds

    if not generation.NEEDED:
        pytest.skip("this transformers names the generation cache as peft 0.21 expects")
    monkeypatch.setattr(PeftModelForCausalLM, "prepare_inputs_for_generation", input_embeds.causal_prepare_inputs)
    model, _ = make_dept("llama", "CAUSAL_LM")
    input_ids, mask = tiny_batch("llama", length=5)
    with torch.no_grad(), pytest.raises(RuntimeError, match="embedded 1 of the 5 input ids"):
        model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=2, min_new_tokens=2)


def test_causal_generate_left_padded_positions_follow_the_mask():
    model, encoder = make_dept("llama", "CAUSAL_LM")
    input_ids, mask = tiny_batch("llama", length=6, pad_side="left")
    seen, handle = capture_kwarg(model.get_base_model(), "inputs_embeds")
    with torch.no_grad():
        model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=2, min_new_tokens=2)
        expected = encoder.adjust_input_embeds(model.word_embeddings(input_ids), mask)
    handle.remove()
    update = encoder.embedding_update().detach()
    torch.testing.assert_close(expected[1, 2:], model.word_embeddings(input_ids[1, 2:]) + update[:4], rtol=0, atol=1e-6)
    torch.testing.assert_close(seen[0][:, N:], expected, rtol=0, atol=0)


def test_seq2seq_generate_updates_the_encoder_input():
    model, encoder = make_dept("t5", "SEQ_2_SEQ_LM")
    input_ids, mask = tiny_batch("t5", length=6)
    seen, handle = capture_kwarg(model.get_base_model().get_encoder(), "inputs_embeds")
    with torch.no_grad():
        generated = model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=4)
    handle.remove()
    with torch.no_grad():
        embeds = encoder.adjust_input_embeds(model.word_embeddings(input_ids), mask)
        embeds = torch.cat((encoder.soft_prompt.expand(2, -1, -1), embeds), dim=1)
        full_mask = torch.cat((torch.ones(2, N, dtype=mask.dtype), mask), dim=1)
        reference = model.get_base_model().generate(inputs_embeds=embeds, attention_mask=full_mask, max_new_tokens=4)
    assert len(seen) == 1
    torch.testing.assert_close(seen[0], embeds, rtol=0, atol=0)
    assert torch.equal(generated, reference)


def test_sequence_classification_path_gets_the_update():
    model, encoder = make_dept("bert", "SEQ_CLS")
    input_ids, _ = tiny_batch("bert", length=6)
    seen, handle = capture_kwarg(model.get_base_model(), "inputs_embeds")
    with torch.no_grad():
        model(input_ids=input_ids)
    handle.remove()
    torch.testing.assert_close(seen[0], expected_input_embeds(model, encoder, input_ids), rtol=0, atol=1e-6)
