"""Everything that couples peft_superpos to peft internals lives in this one module.

peft keeps ``PeftType`` closed and dispatches prompt-learning methods on hard-coded type lists. A method of
ours is a *prompt-prepending* method: its encoder returns ``n`` embeddings that go in front of the (encoder)
input embeddings, exactly like stock prompt tuning. To make stock ``get_peft_model`` and
``PeftModel.from_pretrained`` work for such methods we:

1. add a member to ``PeftType`` and call peft's own ``register_peft_method``;
2. build our encoders in ``PeftModel._setup_prompt_encoder`` (peft raises "Not supported" for unknown types);
3. route ``PeftModelForSeq2SeqLM.forward`` / ``generate`` through the prompt-tuning path (peft's
   other prompt-learning paths build decoder prompts we do not have). Causal LM, sequence classification
   and feature extraction already take a generic path that works unchanged; token classification does
   too, except that peft does not widen ``labels`` for the prompt positions, so we prepend ``-100``;
4. let ``from_pretrained(..., is_trainable=True)`` and ``load_adapter(..., is_trainable=True)`` resume
   training (peft refuses it for every prompt method because stock prompt tuning saves only the final
   table; ours save all the trainable state), and turn an unreadable adapter file into a clear error.

5. let an encoder adjust the embeddings of the input tokens before the prompt goes in front
   (``adjust_input_embeds``, used by DePT; see section 5). Encoders without that method are unaffected.

Saving and loading need no patch: they go through the ``BasePromptEncoder`` hooks that peft provides.
Every patch checks the adapter's type first and leaves every other PEFT method untouched.
"""

from __future__ import annotations

import functools
import inspect
import warnings

import peft
import torch
from packaging.version import Version
from peft import (
    PeftModel,
    PeftModelForCausalLM,
    PeftModelForFeatureExtraction,
    PeftModelForQuestionAnswering,
    PeftModelForSeq2SeqLM,
    PeftModelForSequenceClassification,
    PeftModelForTokenClassification,
)
from peft.config import PeftConfig, PromptLearningConfig
from peft.mapping import PEFT_TYPE_TO_TUNER_MAPPING
from peft.tuners.tuners_utils import BasePromptEncoder
from peft.utils import PeftType, register_peft_method
from peft.utils.other import AuxiliaryTrainingWrapper
from safetensors import SafetensorError
from transformers import PreTrainedModel

SUPPORTED_PEFT = (Version("0.21.0"), Version("0.22.0"))  # [min, max)
_PEFT_VERSION = Version(peft.__version__).release
if not (SUPPORTED_PEFT[0].release <= _PEFT_VERSION < SUPPORTED_PEFT[1].release):
    raise ImportError(
        f"peft_superpos supports peft>={SUPPORTED_PEFT[0]},<{SUPPORTED_PEFT[1]} but peft {peft.__version__} is "
        f'installed: run `pip install "peft>={SUPPORTED_PEFT[0]},<{SUPPORTED_PEFT[1]}"`.'
    )

__all__ = ["BasePromptEncoder", "PeftType", "PromptLearningConfig", "register_prompt_method"]

# PeftType value -> our config class; the single source of truth for "is this adapter one of ours".
_OUR_CONFIGS: dict[str, type[PromptLearningConfig]] = {}


def _add_peft_type(name: str) -> PeftType:
    """Add ``name`` (upper case) to the closed ``PeftType`` enum, once."""
    if name in PeftType.__members__:
        return PeftType[name]
    member = str.__new__(PeftType, name)
    member._name_, member._value_ = name, name
    member.__objclass__ = PeftType
    member._sort_order_ = len(PeftType._member_names_)
    PeftType._member_map_[name] = member
    PeftType._value2member_map_[name] = member
    PeftType._member_names_.append(name)
    type.__setattr__(PeftType, name, member)
    return member


def register_prompt_method(name: str, config_cls: type[PromptLearningConfig], encoder_cls: type) -> PeftType:
    """Register a prompt-prepending method with peft. ``name`` is lower case, e.g. ``"superpos_prompt"``.

    ``encoder_cls(config, word_embeddings, special_token_ids)`` must return a ``BasePromptEncoder`` whose
    forward maps prompt indices ``(B, n)`` to embeddings ``(B, n, d)`` and which has ``embedding.weight``
    ``(n, d)``, the table peft reads in inference mode.
    """
    peft_type = _add_peft_type(name.upper())
    if peft_type.value not in _OUR_CONFIGS:
        register_peft_method(name=name, config_cls=config_cls, model_cls=encoder_cls)
        _OUR_CONFIGS[peft_type.value] = config_cls
    return peft_type


def is_ours(config: PeftConfig | None) -> bool:
    return config is not None and getattr(config, "peft_type", None) in _OUR_CONFIGS


def special_token_ids(model: torch.nn.Module) -> set[int]:
    """Ids the model config or generation config names as special (pad, bos, eos, ...)."""
    ids: set[int] = set()
    for cfg in (getattr(model, "config", None), getattr(model, "generation_config", None)):
        for attr in (
            "pad_token_id",
            "bos_token_id",
            "eos_token_id",
            "unk_token_id",
            "sep_token_id",
            "cls_token_id",
            "mask_token_id",
            "decoder_start_token_id",
        ):
            value = getattr(cfg, attr, None)
            values = value if isinstance(value, (list, tuple)) else [value]
            ids.update(int(v) for v in values if isinstance(v, int) and v >= 0)
    return ids


# -- 2. encoder construction -----------------------------------------------------------------------------
_original_setup_prompt_encoder = PeftModel._setup_prompt_encoder


def _setup_prompt_encoder(self: PeftModel, adapter_name: str) -> None:
    config = self.peft_config[adapter_name]
    if not is_ours(config):
        return _original_setup_prompt_encoder(self, adapter_name)
    if not hasattr(self, "prompt_encoder"):
        self.prompt_encoder = torch.nn.ModuleDict({})
        self.prompt_tokens = {}
    self.base_model.requires_grad_(False)
    self.transformer_backbone_name = next(
        (name for name, child in self.base_model.named_children() if isinstance(child, PreTrainedModel)), None
    )
    if getattr(config, "disable_dropout", False):
        from .dropout import disable_dropout

        disable_dropout(self.base_model)
    self.word_embeddings = self.base_model.get_input_embeddings()
    encoder_cls = PEFT_TYPE_TO_TUNER_MAPPING[config.peft_type]
    encoder = encoder_cls(config, self.word_embeddings, special_token_ids(self.base_model))
    with torch.no_grad():
        encoder.table()  # fills ``embedding.weight``, which peft reads directly when ``inference_mode`` is set
    self.prompt_encoder.update({adapter_name: encoder.to(self.device)})
    self.prompt_tokens[adapter_name] = torch.arange(config.num_virtual_tokens * config.num_transformer_submodules)


# -- 3. seq2seq forward and generate -----------------------------------------------------------------------
def prepend_prompt(
    model: PeftModel,
    input_ids: torch.Tensor | None,
    inputs_embeds: torch.Tensor | None,
    attention_mask: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Ids ``(B, L)`` or embeddings ``(B, L, d)`` -> embeddings ``(B, n + L, d)`` with the prompt in front,
    and the attention mask widened to ``(B, n + L)``."""
    if inputs_embeds is None:
        inputs_embeds = model.word_embeddings(input_ids)
    adjust = input_embeds_adjuster(model)  # section 5 (DePT)
    if adjust is not None:
        inputs_embeds = adjust(inputs_embeds, attention_mask)
    batch_size = inputs_embeds.shape[0]
    prompts = model.get_prompt(batch_size=batch_size).to(inputs_embeds.dtype)
    if attention_mask is not None:
        ones = attention_mask.new_ones(batch_size, prompts.shape[1])
        attention_mask = torch.cat((ones, attention_mask), dim=1)
    return torch.cat((prompts, inputs_embeds), dim=1), attention_mask


_original_seq2seq_forward = PeftModelForSeq2SeqLM.forward
_seq2seq_forward_signature = inspect.signature(_original_seq2seq_forward)


@functools.wraps(_original_seq2seq_forward)
def _seq2seq_forward(self: PeftModelForSeq2SeqLM, *args, **kwargs):
    if not is_ours(self.active_peft_config):
        return _original_seq2seq_forward(self, *args, **kwargs)
    arguments = _seq2seq_forward_signature.bind(self, *args, **kwargs).arguments
    arguments.pop("self")
    extra = arguments.pop("kwargs", {})
    arguments.pop("task_ids", None)
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
def _seq2seq_generate(self: PeftModelForSeq2SeqLM, *args, **kwargs):
    if not is_ours(self.active_peft_config):
        return _original_seq2seq_generate(self, *args, **kwargs)
    if args:
        kwargs["input_ids"] = args[0]
    if kwargs.pop("encoder_outputs", None) is not None:
        warnings.warn(
            "`encoder_outputs` is ignored by prompt methods: the prompt changes the encoder input.", stacklevel=2
        )
    kwargs.pop("task_ids", None)
    self._adjust_prompt_learning_kwargs(self.active_peft_config, kwargs=kwargs)
    inputs_embeds, attention_mask = prepend_prompt(
        self, kwargs.pop("input_ids", None), kwargs.pop("inputs_embeds", None), kwargs.pop("attention_mask", None)
    )
    if attention_mask is not None:
        kwargs["attention_mask"] = attention_mask
    return self.base_model.generate(inputs_embeds=inputs_embeds, **kwargs)


def _widen_token_labels(forward):
    """Wrap ``PeftModelForTokenClassification.forward``: prepend ``-100`` labels for the prompt positions."""
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


# -- 4. resuming training and clear load errors ---------------------------------------------------------
_HUB_KWARGS = ("subfolder", "revision", "cache_dir", "token", "use_auth_token", "local_files_only")


def _saved_type_is_ours(model_id: str, kwargs: dict) -> bool:
    hub_kwargs = {k: kwargs[k] for k in _HUB_KWARGS if k in kwargs}
    return PeftConfig._get_peft_type(model_id, **hub_kwargs) in _OUR_CONFIGS


def make_trainable(model: PeftModel, adapter_name: str) -> None:
    """Turn a loaded adapter of ours into a trainable one (the state to train was saved with it)."""
    model.peft_config[adapter_name].inference_mode = False
    for parameter in model.prompt_encoder[adapter_name].trainable_parameters():
        parameter.requires_grad_(True)
    for module in model.modules():  # modules_to_save, e.g. the classification head of SEQ_CLS / TOKEN_CLS
        if isinstance(module, AuxiliaryTrainingWrapper):
            module.set_requires_grad(adapter_name, True)


def _read_weights_or_explain(load, model_id: str):
    try:
        return load()
    except SafetensorError as error:
        raise ValueError(
            f"Could not read the adapter weights saved in {model_id!r} ({error}). The file is truncated or "
            "corrupt: save the adapter again (or download it again)."
        ) from error


_original_load_adapter = PeftModel.load_adapter


@functools.wraps(_original_load_adapter)
def _load_adapter(self: PeftModel, model_id, adapter_name, is_trainable: bool = False, *args, **kwargs):
    known = self.peft_config.get(adapter_name)
    ours = is_ours(known) if known is not None else _saved_type_is_ours(model_id, kwargs)
    if not ours:
        return _original_load_adapter(self, model_id, adapter_name, is_trainable, *args, **kwargs)
    result = _read_weights_or_explain(
        lambda: _original_load_adapter(self, model_id, adapter_name, False, *args, **kwargs), model_id
    )
    if is_trainable:
        make_trainable(self, adapter_name)
    return result


_original_from_pretrained = PeftModel.from_pretrained.__func__


@functools.wraps(_original_from_pretrained)
def _from_pretrained(cls, model, model_id, adapter_name="default", is_trainable=False, config=None, **kwargs):
    if not is_trainable:
        return _original_from_pretrained(cls, model, model_id, adapter_name, False, config, **kwargs)
    ours = is_ours(config) if config is not None else _saved_type_is_ours(model_id, kwargs)
    if not ours:
        return _original_from_pretrained(cls, model, model_id, adapter_name, True, config, **kwargs)
    peft_model = _original_from_pretrained(cls, model, model_id, adapter_name, False, config, **kwargs)
    make_trainable(peft_model, adapter_name)
    return peft_model


# -- 5. adjusting the input embeddings (DePT) ------------------------------------------------------------
# An encoder may define ``adjust_input_embeds(inputs_embeds (B, L, d), attention_mask (B, L) | None) -> (B, L, d)``.
# It is applied to the embeddings of the original input tokens only, before the prompt is prepended: in
# ``prepend_prompt`` (seq2seq forward/generate), in the stock causal-LM / classification / QA / feature
# extraction forwards (which then get ``inputs_embeds`` instead of ``input_ids``), and in causal-LM generation
# where peft embeds the input ids (its ``prepare_inputs_for_generation``, at the step that injects the prompt).
# Decoder tokens and generated tokens never get it, with or without a KV cache. Every patch below returns the
# stock call unchanged unless the active adapter's encoder defines the method.
def input_embeds_adjuster(model: PeftModel):
    """The active adapter's ``adjust_input_embeds`` when it is one of ours and defines it, else None."""
    if not is_ours(model.active_peft_config):
        return None
    return getattr(model.prompt_encoder[model.active_adapter], "adjust_input_embeds", None)


def _with_adjusted_input_embeds(original):
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


_ADJUSTED_FORWARD_CLASSES = (
    PeftModelForCausalLM,
    PeftModelForSequenceClassification,
    PeftModelForTokenClassification,
    PeftModelForQuestionAnswering,
    PeftModelForFeatureExtraction,
)
_original_forwards = {cls: cls.forward for cls in _ADJUSTED_FORWARD_CLASSES}
_original_causal_generate = PeftModelForCausalLM.generate
_original_causal_prepare_inputs = PeftModelForCausalLM.prepare_inputs_for_generation


@functools.wraps(_original_causal_generate)
def _causal_generate(self: PeftModelForCausalLM, *args, **kwargs):
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
def _causal_prepare_inputs(self: PeftModelForCausalLM, *args, **kwargs):
    adjust = input_embeds_adjuster(self)
    if adjust is None:
        return _original_causal_prepare_inputs(self, *args, **kwargs)
    input_length = getattr(self, "_peft_superpos_input_length", None)
    attention_mask = kwargs.get("attention_mask")
    if not (isinstance(attention_mask, torch.Tensor) and attention_mask.dim() == 2):
        attention_mask = None

    def adjust_original_input(module, inputs, output):  # peft embeds the ids of the whole sequence so far
        length = output.shape[1] if input_length is None else min(input_length, output.shape[1])
        mask = None if attention_mask is None else attention_mask[:, :length]
        return torch.cat((adjust(output[:, :length], mask), output[:, length:]), dim=1)

    handle = self.word_embeddings.register_forward_hook(adjust_original_input)
    try:
        return _original_causal_prepare_inputs(self, *args, **kwargs)
    finally:
        handle.remove()


def _install() -> None:
    if getattr(PeftModel, "_peft_superpos_installed", False):
        return
    PeftModel._setup_prompt_encoder = _setup_prompt_encoder
    PeftModel.load_adapter = _load_adapter
    PeftModel.from_pretrained = classmethod(_from_pretrained)
    PeftModelForSeq2SeqLM.forward = _seq2seq_forward
    PeftModelForSeq2SeqLM.generate = _seq2seq_generate
    for cls, original in _original_forwards.items():  # section 5
        cls.forward = _with_adjusted_input_embeds(original)
    PeftModelForTokenClassification.forward = _widen_token_labels(PeftModelForTokenClassification.forward)
    PeftModelForCausalLM.generate = _causal_generate
    PeftModelForCausalLM.prepare_inputs_for_generation = _causal_prepare_inputs
    PeftModel._peft_superpos_installed = True


_install()
