"""Config fields and checks shared by every prompt method of this package."""

from __future__ import annotations

from dataclasses import dataclass, field

from .._peft_compat import PromptLearningConfig


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
        super().__post_init__()
        value = self.num_virtual_tokens
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"num_virtual_tokens must be a positive int, got {value!r}.")
        if self.num_transformer_submodules not in (None, 1):
            raise ValueError(
                f"{type(self).__name__} prepends prompts to the encoder input only: num_transformer_submodules "
                f"must be 1 (or unset), got {self.num_transformer_submodules}."
            )
        self.num_transformer_submodules = 1
        if self.sample_vocab_size is not None and self.sample_vocab_size <= 0:
            raise ValueError(f"sample_vocab_size must be > 0, got {self.sample_vocab_size}.")
