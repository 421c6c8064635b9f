"""Registration: our methods as members of peft's closed ``PeftType``, and our encoders built where peft
builds prompt encoders (``PeftModel._setup_prompt_encoder``)."""

from __future__ import annotations

import torch
from peft import PeftModel
from peft.config import PeftConfig, PromptLearningConfig
from peft.mapping import PEFT_TYPE_TO_TUNER_MAPPING
from peft.utils import PeftType, register_peft_method
from transformers import PreTrainedModel

# PeftType value -> our config class; the single source of truth for "is this adapter one of ours".
OUR_CONFIGS: dict[str, type[PromptLearningConfig]] = {}


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

    ``encoder_cls.from_peft_model(config, peft_model)`` must return a ``BasePromptEncoder`` whose forward maps
    prompt indices ``(B, n)`` to embeddings ``(B, n, d)`` and whose ``embedding.weight`` is the ``(n, d)`` table,
    which peft reads in inference mode; the method's own policy (its backbone's dropout, the ids it never samples)
    is the encoder's. ``encoder_cls.refuse_partial_state_dict(peft_model, adapter_name, state_dict)`` raises when
    ``save_pretrained`` is given a ``state_dict`` it cannot save from.
    """
    peft_type = _add_peft_type(name.upper())
    if peft_type.value not in OUR_CONFIGS:
        register_peft_method(name=name, config_cls=config_cls, model_cls=encoder_cls)
        OUR_CONFIGS[peft_type.value] = config_cls
    return peft_type


def is_ours(config: PeftConfig | None) -> bool:
    return config is not None and getattr(config, "peft_type", None) in OUR_CONFIGS


_original_setup_prompt_encoder = PeftModel._setup_prompt_encoder


def setup_prompt_encoder(self: PeftModel, adapter_name: str) -> None:
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
    self.word_embeddings = self.base_model.get_input_embeddings()
    encoder = PEFT_TYPE_TO_TUNER_MAPPING[config.peft_type].from_peft_model(config, self)
    self.prompt_encoder.update({adapter_name: encoder.to(self.device)})
    self.prompt_tokens[adapter_name] = torch.arange(config.num_virtual_tokens * config.num_transformer_submodules)
