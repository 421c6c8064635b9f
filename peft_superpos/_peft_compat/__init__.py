"""Everything that couples peft_superpos to peft internals lives in this package, one module per concern.

peft keeps ``PeftType`` closed and dispatches prompt-learning methods on hard-coded type lists. A method of
ours is a *prompt-prepending* method: its encoder returns ``n`` embeddings that go in front of the (encoder)
input embeddings, exactly like stock prompt tuning. To make stock ``get_peft_model``,
``PeftModel.from_pretrained`` and ``save_pretrained`` work for such methods, ``PATCHES`` below lists every
attribute of peft that this package replaces:

- ``registration``: a ``PeftType`` member and peft's own ``register_peft_method`` for each method; our
  encoders are built in ``PeftModel._setup_prompt_encoder`` (peft raises "Not supported" for unknown types) by
  the encoder class's ``from_peft_model``: the method's policy (dropout, special ids) is the encoder's, and this
  package imports nothing else of ``peft_superpos``.
- ``routing``: ``PeftModelForSeq2SeqLM.forward`` / ``generate`` go through the prompt-tuning path (peft's other
  prompt-learning paths build decoder prompts we do not have); ``generate`` is keyword-only as in stock peft
  and gives the base model's generation inside ``disable_adapter()``. Causal LM, sequence classification and
  feature extraction take a generic path that works unchanged; token classification does too, except that
  peft does not widen ``labels`` for the prompt positions, so we prepend ``-100``. A batch that packs several
  sequences into one row (trl's padding-free and packed batches) is refused: peft drops ``position_ids`` for
  prompt methods, so the sequences would silently attend to each other. ``disable_adapter()`` of a
  prompt-learning adapter on an encoder-only model (no ``prepare_inputs_for_generation``) crashes in peft 0.21,
  stock prompt tuning included; it is replaced for that case only (every other case is peft's own).
  ``get_prompt`` takes the prompt of our adapters from a call of the encoder module, where DeepSpeed ZeRO-3 and
  FSDP gather its parameters (stock peft first reads ``encoder.embedding.weight``, which for ours computes the
  table outside that call).
- ``loading``: ``from_pretrained(..., is_trainable=True)`` and ``load_adapter(..., is_trainable=True)`` resume
  training (peft refuses it for every prompt method because stock prompt tuning saves only the final table;
  ours save all the trainable state); damaged or incomplete adapter folders get clear errors;
  ``save_pretrained`` writes our adapters atomically (staging folder, then one rename per file), as safetensors
  or, with ``safe_serialization=False`` as in peft, as ``adapter_model.bin`` with a warning; it refuses a
  ``state_dict`` argument without the
  whole tensors of a prompt that ZeRO-3 or FSDP splits (saving would otherwise gather on one rank and hang).
- ``input_embeds``: an encoder may adjust the embeddings of the input tokens before the prompt goes in front
  (``adjust_input_embeds``, used by DePT). Encoders without that method are unaffected.
- ``fsdp``: ``peft.utils.other.fsdp_auto_wrap_policy`` (which the Trainer and accelerate apply to PEFT models)
  also gives our encoders their own FSDP unit, as it does stock prompt tuning's.
- ``generation`` (transformers >= 5.24 only): causal-LM generation hands peft the KV cache under the name it
  reads (``past_key_values``; transformers now calls it ``cache``), so that the prompt goes in once; for our
  methods and stock prompt tuning.

Saving and loading the tensors need no patch: they go through the ``BasePromptEncoder`` hooks that peft
provides. Every patch checks the adapter's type first and leaves every other PEFT method untouched (except
that a damaged adapter folder of any method gets a clear error instead of a traceback, and that ``disable_adapter``
and ``generation`` also fix stock prompt tuning).
"""

from __future__ import annotations

from . import versions

versions.require_supported_peft()
versions.warn_if_untested()

from peft import (  # noqa: E402  (after the version check)
    PeftModel,
    PeftModelForCausalLM,
    PeftModelForSeq2SeqLM,
    PeftModelForTokenClassification,
)
from peft.config import PromptLearningConfig  # noqa: E402
from peft.tuners.tuners_utils import BasePromptEncoder  # noqa: E402
from peft.utils import PeftType, other  # noqa: E402

from . import fsdp, generation, input_embeds, loading, registration, routing  # noqa: E402
from .registration import is_ours, register_prompt_method  # noqa: E402

__all__ = ["BasePromptEncoder", "PeftType", "PromptLearningConfig", "is_ours", "register_prompt_method"]

# the stock forwards, adjusting input embeddings (DePT); token classification also widens its labels; every one
# (and the encoder-decoder one) refuses packed batches
_FORWARDS = dict(input_embeds.ADJUSTED_FORWARDS)
_FORWARDS[PeftModelForTokenClassification] = routing.widen_token_labels(_FORWARDS[PeftModelForTokenClassification])
_FORWARDS = {cls: routing.refuse_packed_batches(forward) for cls, forward in _FORWARDS.items()}
_FORWARDS[PeftModelForSeq2SeqLM] = routing.refuse_packed_batches(routing.seq2seq_forward)
# causal-LM generation: DePT's input embeddings; with transformers >= 5.24 also the cache under the name peft reads
_CAUSAL_PREPARE_INPUTS = input_embeds.causal_prepare_inputs
if generation.NEEDED:
    _CAUSAL_PREPARE_INPUTS = generation.with_cache_named_for_peft(_CAUSAL_PREPARE_INPUTS)

# (class, attribute, replacement): every attribute of peft this package replaces, installed once at import.
PATCHES = (
    (PeftModel, "_setup_prompt_encoder", registration.setup_prompt_encoder),
    (PeftModel, "from_pretrained", classmethod(loading.from_pretrained)),
    (PeftModel, "load_adapter", loading.load_adapter),
    (PeftModel, "save_pretrained", loading.save_pretrained),
    (PeftModelForSeq2SeqLM, "generate", routing.seq2seq_generate),
    (PeftModel, "disable_adapter", routing.disable_adapter),
    (PeftModel, "get_prompt", routing.get_prompt),
    *((cls, "forward", forward) for cls, forward in _FORWARDS.items()),
    (PeftModelForCausalLM, "generate", input_embeds.causal_generate),
    (PeftModelForCausalLM, "prepare_inputs_for_generation", _CAUSAL_PREPARE_INPUTS),
    (other, "fsdp_auto_wrap_policy", fsdp.fsdp_auto_wrap_policy),
)


def _install() -> None:
    if getattr(PeftModel, "_peft_superpos_installed", False):
        return
    for cls, attribute, replacement in PATCHES:
        setattr(cls, attribute, replacement)
    PeftModel._peft_superpos_installed = True


_install()
