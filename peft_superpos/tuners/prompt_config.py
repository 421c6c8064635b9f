"""Config fields and checks shared by every prompt method of this package."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field

from .._peft_compat import PromptLearningConfig

# what the prompt-prepending path supports (QUESTION_ANS would give the start/end logits n extra positions)
SUPPORTED_TASK_TYPES: tuple[str, ...] = ("CAUSAL_LM", "SEQ_2_SEQ_LM", "SEQ_CLS", "TOKEN_CLS", "FEATURE_EXTRACTION")


def is_int(value) -> bool:
    """An integer that is not a bool (``True`` is an ``int`` in Python)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_positive_int(name: str, value, hint: str = "") -> None:
    if not is_int(value) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}{hint}.")


def check_finite_positive(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}.")


def check_bool(name: str, value) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}.")


def check_int_list(name: str, values) -> list[int]:
    """``values`` as a list of ints, or a ValueError naming the entries that are not ints (5.7, "5", True)."""
    if not isinstance(values, (list, tuple)):
        raise ValueError(f"{name} must be a list of ints, got {values!r}.")
    bad = [value for value in values if not is_int(value)]
    if bad:
        raise ValueError(f"{name} must be a list of ints; not ints: {bad[:10]}.")
    return [int(value) for value in values]


@dataclass
class PromptMethodConfig(PromptLearningConfig):
    """Base of our configs: prompts go in front of the (encoder) input only, and start from vocabulary
    embeddings sampled reproducibly from ``seed`` (special ids skipped)."""

    num_virtual_tokens: int = field(default=10, metadata={"help": "Number of prompt tokens n."})
    seed: int = field(default=0, metadata={"help": "Seed for sampling vocabulary ids and initialising parameters."})
    sample_vocab_size: int | None = field(
        default=None,
        metadata={
            "help": "Sample ids from [0, sample_vocab_size). Defaults to the embedding table size; set it to "
            "len(tokenizer) for models whose table has padding rows (T5: 32100 of 32128)."
        },
    )
    exclude_token_ids: list[int] | None = field(
        default=None,
        metadata={"help": "Extra ids never sampled, besides the special ids of the model config."},
    )
    disable_dropout: bool = field(
        default=False,
        metadata={
            "help": "Switch off every dropout of the frozen backbone when the adapter is created "
            "(see peft_superpos.disable_dropout)."
        },
    )
    base_vocab_size: int | None = field(
        default=None,
        metadata={"help": "Rows of the embedding table the adapter was made on; filled in and checked at load."},
    )

    def __post_init__(self) -> None:
        task_type = getattr(self.task_type, "value", self.task_type)
        if task_type not in SUPPORTED_TASK_TYPES:
            raise ValueError(
                f"task_type must be one of {SUPPORTED_TASK_TYPES} for {type(self).__name__}, got {task_type!r}: "
                "set the task type of your model (e.g. task_type='CAUSAL_LM')."
            )
        super().__post_init__()
        check_positive_int("num_virtual_tokens", self.num_virtual_tokens)
        if not is_int(self.seed):
            raise ValueError(f"seed must be an int, got {self.seed!r}: pass e.g. seed=0.")
        if self.num_transformer_submodules not in (None, 1):
            raise ValueError(
                f"{type(self).__name__} prepends prompts to the encoder input only: num_transformer_submodules "
                f"must be 1 (or unset), got {self.num_transformer_submodules}."
            )
        self.num_transformer_submodules = 1
        if self.sample_vocab_size is not None:
            check_positive_int("sample_vocab_size", self.sample_vocab_size, " (or None for the whole table)")
        if self.exclude_token_ids is not None:
            self.exclude_token_ids = check_int_list("exclude_token_ids", self.exclude_token_ids)
        check_bool("disable_dropout", self.disable_dropout)
