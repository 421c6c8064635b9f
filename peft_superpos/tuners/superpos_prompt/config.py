"""Configuration of SuperPos-Prompt (arXiv 2406.05279)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ..._peft_compat import PeftType
from ..prompt_config import PromptMethodConfig

WeightInit = Literal["normal", "uniform", "one_hot"]
WEIGHT_INITS: tuple[str, ...] = ("normal", "uniform", "one_hot")


@dataclass
class SuperPosPromptConfig(PromptMethodConfig):
    """Each of the ``num_virtual_tokens`` prompt tokens is a learned superposition of ``m`` frozen vocabulary
    embeddings: ``p_i = (E_freeze + ΔE_i)ᵀ p'_i``.

    ``E_freeze`` (m x d) holds the input embeddings of ``m`` unique vocabulary ids sampled once (from ``seed``)
    or given as ``token_ids``; it is never trained. ``ΔE_i`` (m x d, zeros at start) and ``p'_i`` (m) are
    trained for every prompt token i. Trainable parameters: ``n·m·d + n·m``.
    """

    num_virtual_tokens: int = field(default=10, metadata={"help": "Number of prompt tokens n (paper: 10)."})
    m: int = field(
        default=128,
        metadata={"help": "Number of vocabulary embeddings each prompt token superposes (paper: 128)."},
    )
    seed: int = field(default=0, metadata={"help": "Seed for sampling the m vocabulary ids and for initialising p'."})
    token_ids: list[int] | None = field(
        default=None,
        metadata={
            "help": "Explicit vocabulary ids for E_freeze (len must equal m). When unset, m ids are sampled "
            "from the model's embedding table at creation (skipping special tokens) and written here, so the "
            "saved adapter_config.json records them."
        },
    )
    use_softmax: bool = field(
        default=False,
        metadata={"help": "Apply softmax to p'_i before superposing (the paper's ablation; it scores lower)."},
    )
    weight_init: str = field(
        default="normal",
        metadata={
            "help": "Initialisation of p'_i. 'normal': N(0, weight_init_std²), std defaulting to 1/sqrt(m) so "
            "that a prompt starts with about the norm of one vocabulary embedding, and every prompt differs. "
            "'uniform': U(-a, a) with the same std. 'one_hot': prompt i starts as exactly sampled token i "
            "(like vocabulary-sampled init of vanilla prompt tuning; needs n <= m)."
        },
    )
    weight_init_std: float | None = field(
        default=None, metadata={"help": "Std of p' for 'normal'/'uniform' init; default 1/sqrt(m)."}
    )
    disable_dropout: bool = field(
        default=True,
        metadata={
            "help": "Switch off every dropout of the frozen backbone when the adapter is created (the paper's "
            "finding: faster convergence, better scores). See peft_superpos.disable_dropout."
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = PeftType.SUPERPOS_PROMPT
        if not isinstance(self.m, int) or self.m <= 0:
            raise ValueError(f"m must be a positive int, got {self.m!r}: the paper uses m=128.")
        if self.token_ids is not None:
            self.token_ids = [int(i) for i in self.token_ids]
            if len(self.token_ids) != self.m:
                raise ValueError(
                    f"{len(self.token_ids)} token_ids were given but m={self.m}: pass m={len(self.token_ids)}."
                )
            if min(self.token_ids) < 0:
                raise ValueError(f"token_ids must be >= 0, got {min(self.token_ids)}.")
            duplicates = sorted({i for i in self.token_ids if self.token_ids.count(i) > 1})
            if duplicates:
                raise ValueError(f"token_ids must be unique; repeated: {duplicates[:10]}.")
        if self.weight_init not in WEIGHT_INITS:
            raise ValueError(f"weight_init must be one of {WEIGHT_INITS}, got {self.weight_init!r}.")
        if self.weight_init == "one_hot" and self.num_virtual_tokens > self.m:
            raise ValueError(
                f"weight_init='one_hot' gives each prompt its own sampled token, so it needs num_virtual_tokens "
                f"({self.num_virtual_tokens}) <= m ({self.m})."
            )
        if self.weight_init_std is not None and self.weight_init_std <= 0:
            raise ValueError(f"weight_init_std must be > 0, got {self.weight_init_std}.")
