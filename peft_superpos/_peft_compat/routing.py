"""Routing by task type: encoder-decoder forward and generate through the prompt-tuning path, the labels of
token classification widened for the prompt positions, and ``disable_adapter()`` on models without
``prepare_inputs_for_generation`` (encoder-only: sequence/token classification, feature extraction). The prompt
itself always comes from a call of the encoder module (``get_prompt``), so that DeepSpeed ZeRO-3 and FSDP gather
its parameters there as they do for any module."""

from __future__ import annotations

import contextlib
import functools
import inspect
import warnings
from collections.abc import Iterator

import torch
from peft import PeftModel, PeftModelForSeq2SeqLM, PeftModelForTokenClassification

from .input_embeds import input_embeds_adjuster
from .registration import is_ours


def prepend_prompt(
    model: PeftModelForSeq2SeqLM,
    input_ids: torch.Tensor | None,
    inputs_embeds: torch.Tensor | None,
    attention_mask: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Ids ``(B, L)`` or embeddings ``(B, L, d)`` -> embeddings ``(B, n + L, d)`` with the prompt in front,
    and the attention mask widened to ``(B, n + L)``."""
    if inputs_embeds is None:
        inputs_embeds = model.word_embeddings(input_ids)
    adjust = input_embeds_adjuster(model)
    if adjust is not None:
        inputs_embeds = adjust(inputs_embeds, attention_mask)
    batch_size = inputs_embeds.shape[0]
    prompts = model.get_prompt(batch_size=batch_size).to(inputs_embeds.dtype)
    if attention_mask is not None:
        ones = attention_mask.new_ones(batch_size, prompts.shape[1])
        attention_mask = torch.cat((ones, attention_mask), dim=1)
    return torch.cat((prompts, inputs_embeds), dim=1), attention_mask


_original_get_prompt = PeftModel.get_prompt


@functools.wraps(_original_get_prompt)
def get_prompt(self: PeftModel, batch_size: int, task_ids=None, max_cache_len=None) -> torch.Tensor:
    """The prompt ``(batch_size, n, d)`` of the active adapter, from a call of its encoder module (stock peft
    first reads ``encoder.embedding.weight`` for its device, and in inference mode uses it as the prompt: for our
    encoders that computes the table outside the module call, where ZeRO-3 and FSDP have not gathered the
    parameters)."""
    config = self.active_peft_config
    if not is_ours(config):
        return _original_get_prompt(self, batch_size, task_ids=task_ids, max_cache_len=max_cache_len)
    tokens = self.prompt_tokens[self.active_adapter][None]  # one row, then repeated, as stock peft does
    prompts = self.prompt_encoder[self.active_adapter](tokens, inference=config.inference_mode)
    return prompts.repeat(batch_size, 1, 1)


def _refuse_task_ids(model: PeftModelForSeq2SeqLM, task_ids) -> None:
    if task_ids is not None:
        raise ValueError(
            f"task_ids select a task of MULTITASK_PROMPT_TUNING; {model.active_peft_config.peft_type.value} has one "
            "prompt for every input: leave task_ids unset."
        )


_original_seq2seq_forward = PeftModelForSeq2SeqLM.forward
_seq2seq_forward_signature = inspect.signature(_original_seq2seq_forward)


@functools.wraps(_original_seq2seq_forward)
def seq2seq_forward(self: PeftModelForSeq2SeqLM, *args, **kwargs):
    if not is_ours(self.active_peft_config):
        return _original_seq2seq_forward(self, *args, **kwargs)
    arguments = _seq2seq_forward_signature.bind(self, *args, **kwargs).arguments
    arguments.pop("self")
    extra = arguments.pop("kwargs", {})
    _refuse_task_ids(self, arguments.pop("task_ids", None))
    self._adjust_prompt_learning_kwargs(self.active_peft_config, kwargs=extra)
    inputs_embeds, attention_mask = prepend_prompt(
        self,
        arguments.pop("input_ids", None),
        arguments.pop("inputs_embeds", None),
        arguments.pop("attention_mask", None),
    )
    return self.base_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, **arguments, **extra)


_original_seq2seq_generate = PeftModelForSeq2SeqLM.generate


@functools.wraps(_original_seq2seq_generate)
def seq2seq_generate(self: PeftModelForSeq2SeqLM, **kwargs):
    """Keyword-only, as stock peft's: every argument goes on to the base model's ``generate`` (a
    ``generation_config`` included). Inside ``disable_adapter()`` it is the base model's generation."""
    if not is_ours(self.active_peft_config):
        return _original_seq2seq_generate(self, **kwargs)
    if self._adapters_disabled:
        return self.base_model.generate(**kwargs)
    if "encoder_outputs" in kwargs:
        del kwargs["encoder_outputs"]
        warnings.warn(
            "`encoder_outputs` should not be passed to `generate` when using a prompt method: the prompt changes "
            "the encoder input. Ignoring it.",
            stacklevel=2,
        )
    _refuse_task_ids(self, kwargs.pop("task_ids", None))
    self._adjust_prompt_learning_kwargs(self.active_peft_config, kwargs=kwargs)
    inputs_embeds, attention_mask = prepend_prompt(
        self, kwargs.pop("input_ids", None), kwargs.pop("inputs_embeds", None), kwargs.pop("attention_mask", None)
    )
    if attention_mask is not None:
        kwargs["attention_mask"] = attention_mask
    return self.base_model.generate(inputs_embeds=inputs_embeds, **kwargs)


def packs_sequences(
    position_ids: torch.Tensor | None, attention_mask: torch.Tensor | None, cu_seq_lens: torch.Tensor | None = None
) -> bool:
    """Whether a batch packs several sequences into one row (trl's ``padding_free=True`` and ``packing=True``):
    boundaries given as ``cu_seq_lens``, or ``position_ids`` ``(B, L)`` that stop increasing inside a row among the
    tokens ``attention_mask`` ``(B, L)`` keeps (left-padded generation's positions do increase there)."""
    if cu_seq_lens is not None:
        return True
    if not isinstance(position_ids, torch.Tensor) or position_ids.dim() != 2 or position_ids.shape[1] < 2:
        return False
    keep = torch.ones_like(position_ids, dtype=torch.bool)
    if isinstance(attention_mask, torch.Tensor) and attention_mask.shape == position_ids.shape:
        keep = attention_mask.bool()
    positions = position_ids.masked_fill(~keep, -1)
    highest_before = positions.cummax(dim=1).values[:, :-1]
    return bool((keep[:, 1:] & (positions[:, 1:] <= highest_before)).any())


def refuse_packed_batches(forward):
    """Wrap a ``PeftModel`` forward: for our adapters, a batch that ``packs_sequences`` raises a ValueError. peft
    drops ``position_ids`` for prompt methods and puts one prompt in front of each row, so the packed sequences
    would attend to each other and only the first would follow the prompt."""
    signature = inspect.signature(forward)
    var_keyword = next(p.name for p in signature.parameters.values() if p.kind is p.VAR_KEYWORD)

    @functools.wraps(forward)
    def wrapped(self: PeftModel, *args, **kwargs):
        if is_ours(self.active_peft_config):
            arguments = signature.bind(self, *args, **kwargs).arguments
            inputs = {**arguments.get(var_keyword, {}), **arguments}
            if packs_sequences(inputs.get("position_ids"), inputs.get("attention_mask"), inputs.get("cu_seq_lens_q")):
                raise ValueError(
                    f"{self.active_peft_config.peft_type.value} puts its prompt in front of each row, but this batch "
                    "packs several sequences into one row (position_ids restart inside a row, or cu_seq_lens_q is "
                    "given), as trl's padding_free=True and packing=True do; peft drops position_ids for prompt "
                    "methods, so the sequences would attend to each other and only the first would follow the "
                    "prompt. Train on padded batches: SFTConfig(packing=False, padding_free=False)."
                )
        return forward(self, *args, **kwargs)

    return wrapped


def widen_token_labels(forward):
    """Wrap a ``PeftModelForTokenClassification.forward``: prepend ``-100`` labels for the prompt positions."""
    signature = inspect.signature(forward)

    @functools.wraps(forward)
    def wrapped(self: PeftModelForTokenClassification, *args, **kwargs):
        if not is_ours(self.active_peft_config):
            return forward(self, *args, **kwargs)
        arguments = signature.bind(self, *args, **kwargs).arguments
        labels = arguments.get("labels")
        if labels is not None:
            num_tokens = self.active_peft_config.num_virtual_tokens
            arguments["labels"] = torch.cat((labels.new_full((labels.shape[0], num_tokens), -100), labels), dim=1)
        arguments.pop("self")
        extra = arguments.pop("kwargs", {})
        return forward(self, **arguments, **extra)

    return wrapped


_STOCK_DISABLE_ADAPTER = PeftModel.disable_adapter


@contextlib.contextmanager
def disable_adapter(self: PeftModel) -> Iterator[None]:
    """``PeftModel.disable_adapter`` for prompt-learning adapters on models that have no
    ``prepare_inputs_for_generation`` (peft 0.21 reads it unconditionally and fails with ``UnboundLocalError``,
    for stock prompt tuning too): only ``forward`` is swapped for the base model's. Every other case is peft's."""
    config = self.peft_config[self.active_adapter]
    if not config.is_prompt_learning or hasattr(self, "prepare_inputs_for_generation"):
        with _STOCK_DISABLE_ADAPTER(self):
            yield
        return
    was_disabled, old_forward = self._adapters_disabled, self.forward
    try:
        self.forward = self.base_model.forward
        self._adapters_disabled = True
        yield
    finally:
        self.forward = old_forward
        self._adapters_disabled = was_disabled
