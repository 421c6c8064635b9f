"""Serving a trained prompt with an inference engine that takes input embeddings instead of token ids (vLLM's
``--enable-prompt-embeds``, SGLang's ``input_embeds``): the prompt table in front of the embedded input, placed and
scaled exactly as peft does it inside ``forward``, so the plain base model gives the PeftModel's outputs."""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass

import torch
from peft import PeftModel
from peft.utils import PeftType

from ._peft_compat import is_ours
from ._peft_compat.routing import prepend_prompt


@dataclass(frozen=True)
class PromptedInputs:
    """A batch as the base model sees it under a prompt adapter: ``inputs_embeds`` ``(B, n + L, d)`` in the model's
    dtype (the ``n`` prompt rows first, then the embedded input with its padding where it was) and
    ``attention_mask`` ``(B, n + L)`` (ones over the prompt)."""

    inputs_embeds: torch.Tensor
    attention_mask: torch.Tensor

    def sequences(self) -> list[torch.Tensor]:
        """One ``(n + L_i, d)`` tensor per row without its padding: what one engine request carries (the prompt,
        then the row's tokens), equal to what peft builds for that row given alone."""
        return [row[mask.bool()] for row, mask in zip(self.inputs_embeds, self.attention_mask, strict=True)]

    def vllm_prompts(self) -> list[dict[str, torch.Tensor]]:
        """vLLM offline inputs, one per row: ``LLM(model, enable_prompt_embeds=True).generate(prompts)``."""
        return [{"prompt_embeds": sequence} for sequence in self.sequences()]

    def vllm_completion_requests(self, model: str, **params) -> list[dict]:
        """Bodies of ``POST /v1/completions`` to ``vllm serve MODEL --enable-prompt-embeds``, one per row:
        ``prompt_embeds`` is the row's tensor saved with ``torch.save`` and base64-encoded; ``params`` are the
        other fields (``max_tokens``, ``temperature``, ...)."""
        return [{"model": model, "prompt_embeds": _torch_save_base64(seq), **params} for seq in self.sequences()]

    def sglang_requests(self, **sampling_params) -> list[dict]:
        """Bodies of ``POST /generate`` to an SGLang server, one per row: ``input_embeds`` as nested lists
        ``[n + L_i][d]`` of floats (JSON has no tensors) and ``sampling_params``."""
        return [
            {"input_embeds": seq.float().tolist(), "sampling_params": dict(sampling_params)} for seq in self.sequences()
        ]


def prompted_inputs(
    model: PeftModel, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
) -> PromptedInputs:
    """The base model's inputs for ``input_ids`` ``(B, L)`` (already templated, with the BOS the tokenizer adds, as
    you would pass them to ``model``) under the active adapter of ``model``: one of ours or a stock PROMPT_TUNING
    adapter (e.g. one written by ``export_prompt_tuning``).

    As in peft: the input ids go through the model's embedding module (so Gemma's and scaled mBART's ``sqrt(d)``
    is applied as the model applies it), DePT's update is added to them, and the prompt goes in front of the whole
    row, BOS and left padding included. ``base(inputs_embeds=..., attention_mask=...)`` then gives the logits of
    ``model(input_ids, attention_mask)``; on an encoder-decoder model these are the encoder's inputs.
    """
    config = model.active_peft_config
    if not (is_ours(config) or config.peft_type == PeftType.PROMPT_TUNING):
        raise ValueError(
            f"prompted_inputs serves prompts that go in front of the input embeddings (peft_superpos methods and "
            f"PROMPT_TUNING), but the active adapter is {config.peft_type.value}: serve it with its own engine support."
        )
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    with torch.no_grad():
        inputs_embeds, attention_mask = prepend_prompt(model, input_ids, None, attention_mask)
    return PromptedInputs(inputs_embeds.detach(), attention_mask)


def _torch_save_base64(tensor: torch.Tensor) -> str:
    buffer = io.BytesIO()
    torch.save(tensor.detach().cpu().contiguous(), buffer)
    return base64.b64encode(buffer.getvalue()).decode("ascii")
