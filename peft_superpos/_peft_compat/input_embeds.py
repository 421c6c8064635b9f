"""Adjusting the input embeddings (DePT).

An encoder may define ``adjust_input_embeds(inputs_embeds (B, L, d), attention_mask (B, L) | None) -> (B, L, d)``;
its forward must then return that when called as ``encoder(inputs_embeds=..., attention_mask=...)``: the adjustment
runs in a call of the encoder module, where DeepSpeed ZeRO-3 and FSDP gather its parameters. It is applied to the
embeddings of the original input tokens only, before the prompt is prepended: in
``routing.prepend_prompt`` (seq2seq forward/generate), in the stock causal-LM / classification / feature
extraction forwards (which then get ``inputs_embeds`` instead of ``input_ids``), and in causal-LM generation
where peft embeds the input ids (its ``prepare_inputs_for_generation``, at the step that injects the prompt: the
first step with a KV cache, every step without one). Decoder tokens and generated tokens never get it, with or
without a KV cache; a step that embeds less than the whole input (peft misreading the cache, as with transformers
>= 5.24 without ``generation``'s patch) is an error rather than an update on the wrong tokens. Every patch here
returns the stock call unchanged unless the active adapter's encoder defines the method and adapters are enabled.
"""

from __future__ import annotations

import functools
import inspect

import torch
from peft import (
    PeftModel,
    PeftModelForCausalLM,
    PeftModelForFeatureExtraction,
    PeftModelForSequenceClassification,
    PeftModelForTokenClassification,
)

from .registration import is_ours


def input_embeds_adjuster(model: PeftModel):
    """``adjust(inputs_embeds, attention_mask)`` through the active adapter's encoder module when it is one of ours,
    defines ``adjust_input_embeds`` and is enabled, else None."""
    if not is_ours(model.active_peft_config) or model._adapters_disabled:
        return None
    encoder = model.prompt_encoder[model.active_adapter]
    if not hasattr(encoder, "adjust_input_embeds"):
        return None
    return lambda inputs_embeds, attention_mask: encoder(inputs_embeds=inputs_embeds, attention_mask=attention_mask)


def with_adjusted_input_embeds(original):
    """Wrap a stock ``forward(self, input_ids, attention_mask, inputs_embeds, ..., **kwargs)`` so that it gets
    the adjusted ``inputs_embeds`` (embedding ``input_ids`` first when needed) in place of ``input_ids``."""
    signature = inspect.signature(original)
    var_keyword = next(p.name for p in signature.parameters.values() if p.kind is p.VAR_KEYWORD)

    @functools.wraps(original)
    def forward(self, *args, **kwargs):
        adjust = input_embeds_adjuster(self)
        if adjust is None:
            return original(self, *args, **kwargs)
        arguments = signature.bind(self, *args, **kwargs).arguments
        if arguments.get("input_ids") is None and arguments.get("inputs_embeds") is None:
            return original(self, *args, **kwargs)
        arguments.pop("self")
        extra = arguments.pop(var_keyword, {})
        input_ids, inputs_embeds = arguments.pop("input_ids", None), arguments.pop("inputs_embeds", None)
        if inputs_embeds is None:
            inputs_embeds = self.word_embeddings(input_ids)
        arguments["inputs_embeds"] = adjust(inputs_embeds, arguments.get("attention_mask"))
        return original(self, **arguments, **extra)

    return forward


# the stock forwards of every task type our configs accept besides SEQ_2_SEQ_LM (see routing), wrapped
ADJUSTED_FORWARDS = {
    cls: with_adjusted_input_embeds(cls.forward)
    for cls in (
        PeftModelForCausalLM,
        PeftModelForSequenceClassification,
        PeftModelForTokenClassification,
        PeftModelForFeatureExtraction,
    )
}
_original_causal_generate = PeftModelForCausalLM.generate
_original_causal_prepare_inputs = PeftModelForCausalLM.prepare_inputs_for_generation


@functools.wraps(_original_causal_generate)
def causal_generate(self: PeftModelForCausalLM, *args, **kwargs):
    if input_embeds_adjuster(self) is None:
        return _original_causal_generate(self, *args, **kwargs)
    input_ids = args[0] if args else kwargs.get("input_ids")
    if input_ids is None:
        raise ValueError(
            f"{self.active_peft_config.peft_type.value} adjusts the input token embeddings: pass `input_ids` to "
            "generate (not only `inputs_embeds`)."
        )
    self._peft_superpos_input_length = input_ids.shape[1]  # generated tokens start after it
    try:
        return _original_causal_generate(self, *args, **kwargs)
    finally:
        del self._peft_superpos_input_length


@functools.wraps(_original_causal_prepare_inputs)
def causal_prepare_inputs(self: PeftModelForCausalLM, *args, **kwargs):
    adjust = input_embeds_adjuster(self)
    if adjust is None:
        return _original_causal_prepare_inputs(self, *args, **kwargs)
    input_length = getattr(self, "_peft_superpos_input_length", None)
    attention_mask = kwargs.get("attention_mask")
    if not (isinstance(attention_mask, torch.Tensor) and attention_mask.dim() == 2):
        attention_mask = None

    def adjust_original_input(module, inputs, output):  # peft embeds the ids of the whole sequence so far
        if input_length is not None and output.shape[1] < input_length:
            raise RuntimeError(
                f"peft embedded {output.shape[1]} of the {input_length} input ids to inject the prompt during "
                "generation, so the input-embedding update would land on generated tokens. This peft/transformers "
                "pair is not supported by peft_superpos: install the versions setup.cfg states as tested."
            )
        length = output.shape[1] if input_length is None else input_length
        mask = None if attention_mask is None else attention_mask[:, :length]
        return torch.cat((adjust(output[:, :length], mask), output[:, length:]), dim=1)

    handle = self.word_embeddings.register_forward_hook(adjust_original_input)
    try:
        return _original_causal_prepare_inputs(self, *args, **kwargs)
    finally:
        handle.remove()
