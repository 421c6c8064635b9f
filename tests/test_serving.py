"""Serving through input embeddings: ``prompted_inputs`` gives the plain base model what peft gives it, for every
method of ours and for an exported stock prompt-tuning adapter, on decoder and encoder-decoder models; the vLLM and
SGLang request bodies carry those embeddings, one unpadded sequence per request, in the model's dtype."""

from __future__ import annotations

import base64
import io
import json

import pytest
import torch
from peft import PeftModel
from tiny_models import HIDDEN, NUM_VIRTUAL_TOKENS, make_peft, make_tiny, method_id, perturb, prompt_methods, tiny_batch

from peft_superpos import export_prompt_tuning, prompted_inputs

METHODS = prompt_methods()
CASES = [("llama", "CAUSAL_LM"), ("gemma", "CAUSAL_LM"), ("t5", "SEQ_2_SEQ_LM")]
NEW_TOKENS = 5


def trained(family: str, task: str, config_cls, kwargs: dict):
    model = make_peft(family, task, config_cls, **kwargs)
    perturb(model)
    model.eval()
    return model


def decoder_inputs(model, input_ids: torch.Tensor) -> dict:
    start = model.get_base_model().config.decoder_start_token_id
    return {"decoder_input_ids": torch.cat((torch.full_like(input_ids[:, :1], start), input_ids[:, :3]), dim=1)}


def assert_serves_like_peft(model, family: str, task: str) -> None:
    base = model.get_base_model()
    seq2seq = task == "SEQ_2_SEQ_LM"
    for pad_side in ("left", "right"):
        input_ids, attention_mask = tiny_batch(family, pad_side=pad_side)
        served = prompted_inputs(model, input_ids, attention_mask)
        assert served.inputs_embeds.shape == (2, NUM_VIRTUAL_TOKENS + input_ids.shape[1], HIDDEN)
        extra = decoder_inputs(model, input_ids) if seq2seq else {}
        with torch.no_grad():
            expected = model(input_ids=input_ids, attention_mask=attention_mask, **extra).logits
            actual = base(inputs_embeds=served.inputs_embeds, attention_mask=served.attention_mask, **extra).logits
        assert torch.equal(actual, expected), pad_side

    input_ids, attention_mask = tiny_batch(family, pad_side="left" if not seq2seq else "right")
    served = prompted_inputs(model, input_ids, attention_mask)
    greedy = {"max_new_tokens": NEW_TOKENS, "do_sample": False}
    with torch.no_grad():
        if seq2seq:  # the engine's encoder input is the whole batch, prompt in front
            expected = model.generate(input_ids=input_ids, attention_mask=attention_mask, **greedy)
            actual = base.generate(inputs_embeds=served.inputs_embeds, attention_mask=served.attention_mask, **greedy)
            assert torch.equal(actual, expected)
            return
        for row, sequence in enumerate(served.sequences()):  # one request per row, without its padding
            alone = input_ids[row, attention_mask[row].bool()][None]
            # without a KV cache: peft 0.21's cached prompt-learning generation drifts under transformers 5.24
            expected = model.generate(input_ids=alone, use_cache=False, **greedy)[0, alone.shape[1] :]
            actual = base.generate(inputs_embeds=sequence[None], **greedy)[0]
            assert torch.equal(actual, expected), row


@pytest.mark.parametrize("family,task", CASES, ids=[family for family, _ in CASES])
@pytest.mark.parametrize("config_cls,kwargs", METHODS, ids=[method_id(cls) for cls, _ in METHODS])
def test_base_model_on_prompted_inputs_matches_the_peft_model(config_cls, kwargs, family, task):
    assert_serves_like_peft(trained(family, task, config_cls, kwargs), family, task)


@pytest.mark.parametrize("family,task", CASES, ids=[family for family, _ in CASES])
def test_exported_stock_adapter_serves_the_same(family, task, tmp_path):
    from peft_superpos import SuperPosPromptConfig

    model = trained(family, task, SuperPosPromptConfig, {"num_virtual_tokens": NUM_VIRTUAL_TOKENS, "m": 16})
    export_prompt_tuning(model, tmp_path / "stock")
    stock = PeftModel.from_pretrained(make_tiny(family, task), tmp_path / "stock")
    assert stock.active_peft_config.peft_type.value == "PROMPT_TUNING"
    input_ids, attention_mask = tiny_batch(family, pad_side="left")
    ours, theirs = prompted_inputs(model, input_ids, attention_mask), prompted_inputs(stock, input_ids, attention_mask)
    assert torch.equal(ours.inputs_embeds, theirs.inputs_embeds)
    assert torch.equal(ours.attention_mask, theirs.attention_mask)
    assert_serves_like_peft(stock, family, task)


def test_request_bodies_carry_unpadded_sequences_in_the_model_dtype():
    from peft_superpos import SuperPosPromptConfig

    base = make_tiny("llama", "CAUSAL_LM", dtype=torch.bfloat16)
    model = make_peft("llama", "CAUSAL_LM", SuperPosPromptConfig, base=base, num_virtual_tokens=4, m=16)
    input_ids, attention_mask = tiny_batch("llama", pad_side="left")
    served = prompted_inputs(model, input_ids, attention_mask)
    lengths = [NUM_VIRTUAL_TOKENS + int(mask.sum()) for mask in attention_mask]  # 4 + 7 and 4 + 5
    assert served.inputs_embeds.dtype == torch.bfloat16

    offline = served.vllm_prompts()
    assert [tuple(p["prompt_embeds"].shape) for p in offline] == [(n, HIDDEN) for n in lengths]
    assert all(p["prompt_embeds"].dtype == torch.bfloat16 for p in offline)

    for body, sequence, length in zip(
        served.vllm_completion_requests("base", max_tokens=8), served.sequences(), lengths, strict=True
    ):
        json.dumps(body)
        assert body["model"] == "base" and body["max_tokens"] == 8
        decoded = torch.load(io.BytesIO(base64.b64decode(body["prompt_embeds"])), weights_only=True)
        assert decoded.shape == (length, HIDDEN) and decoded.dtype == torch.bfloat16
        assert torch.equal(decoded, sequence)

    for body, sequence, length in zip(
        served.sglang_requests(max_new_tokens=8), served.sequences(), lengths, strict=True
    ):
        json.dumps(body)
        assert body["sampling_params"] == {"max_new_tokens": 8}
        assert len(body["input_embeds"]) == length and {len(row) for row in body["input_embeds"]} == {HIDDEN}
        assert torch.equal(torch.tensor(body["input_embeds"], dtype=torch.bfloat16), sequence)  # bf16 is exact in JSON


def test_other_peft_methods_are_refused():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(make_tiny("llama"), LoraConfig(task_type="CAUSAL_LM", target_modules=["q_proj"]))
    with pytest.raises(ValueError, match="LORA"):
        prompted_inputs(model, *tiny_batch("llama"))
