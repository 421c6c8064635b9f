"""FSDP: peft's ``fsdp_auto_wrap_policy`` (which the Trainer and accelerate apply to PEFT models) puts the prompt
encoder of our methods in its own FSDP unit, as it does for stock prompt tuning's. The class set it wraps is a
literal inside that function, so the function is replaced; for every other module its decision is peft's."""

from __future__ import annotations

import functools

from peft.mapping import PEFT_TYPE_TO_TUNER_MAPPING
from peft.utils import other
from torch.distributed.fsdp.wrap import _or_policy, transformer_auto_wrap_policy

from .registration import OUR_CONFIGS

_original_fsdp_auto_wrap_policy = other.fsdp_auto_wrap_policy


@functools.wraps(_original_fsdp_auto_wrap_policy)
def fsdp_auto_wrap_policy(model):
    encoders = {PEFT_TYPE_TO_TUNER_MAPPING[peft_type] for peft_type in OUR_CONFIGS}
    ours = functools.partial(transformer_auto_wrap_policy, transformer_layer_cls=encoders)
    return functools.partial(_or_policy, policies=[_original_fsdp_auto_wrap_policy(model), ours])
