"""Causal-LM generation with transformers >= 5.24, which renamed the generation cache from ``past_key_values`` to
``cache`` (in ``prepare_inputs_for_generation``, the model kwargs and the model forwards).

peft 0.21's ``PeftModelForCausalLM.prepare_inputs_for_generation`` injects the prompt when
``model_kwargs["past_key_values"]`` is missing or empty. Under the new name it never finds the cache, so it
prepends the prompt again at every decoding step: the cache grows by ``n + 1`` positions per new token while the
attention mask grows by one. Llama, GPT-2 and the like then generate silently wrong tokens; OPT (positions from the
mask) and BLOOM (ALiBi from the mask) fail with a shape error. The patch hands peft the cache under the old name
and gives it back to the model under the new one, for our methods and stock prompt tuning (the format
``export_prompt_tuning`` writes); every other adapter gets peft's own code.
"""

from __future__ import annotations

import functools

import transformers
from packaging.version import Version
from peft import PeftModelForCausalLM
from peft.utils import PeftType

from .registration import is_ours

# the first transformers release that names the generation cache ``cache``
CACHE_RENAMED_IN = Version("5.24.0")
NEEDED = Version(transformers.__version__).release >= CACHE_RENAMED_IN.release
_PEFT_NAME, _TRANSFORMERS_NAME = "past_key_values", "cache"


def _rename(inputs: dict, old: str, new: str) -> dict:
    if old in inputs:
        inputs[new] = inputs.pop(old)
    return inputs


def with_cache_named_for_peft(prepare_inputs):
    """Wrap a ``PeftModelForCausalLM.prepare_inputs_for_generation``: the base model's prepared inputs reach it with
    the cache under ``past_key_values``, and its result goes back to the model with the cache under ``cache``."""

    @functools.wraps(prepare_inputs)
    def prepare(self: PeftModelForCausalLM, *args, **kwargs):
        config = self.active_peft_config
        if not (is_ours(config) or config.peft_type == PeftType.PROMPT_TUNING):
            return prepare_inputs(self, *args, **kwargs)
        base_prepare = self.base_model_prepare_inputs_for_generation

        def base_prepare_with_peft_name(*base_args, **base_kwargs):
            return _rename(base_prepare(*base_args, **base_kwargs), _TRANSFORMERS_NAME, _PEFT_NAME)

        self.base_model_prepare_inputs_for_generation = base_prepare_with_peft_name
        try:
            inputs = prepare_inputs(self, *args, **kwargs)
        finally:
            self.base_model_prepare_inputs_for_generation = base_prepare
        return _rename(inputs, _PEFT_NAME, _TRANSFORMERS_NAME)

    return prepare
