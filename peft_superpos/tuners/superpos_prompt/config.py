"""Configuration of SuperPos-Prompt (arXiv 2406.05279)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from ..._peft_compat import PeftType
from ..prompt_config import (
    PromptMethodConfig,
    check_bool,
    check_finite_positive,
    check_int_list,
    check_positive_int,
)


class WeightInit(str, enum.Enum):
    """Initialisation of p' (a str enum, as peft's own option enums: configs and JSON hold the plain string)."""

    NORMAL = "normal"
    UNIFORM = "uniform"
    ONE_HOT = "one_hot"


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
        metadata={
            "help": "Apply softmax to p'_i before superposing (the paper's ablation; it scores lower there). Its "
            "AdamW step per unit lr is much smaller (Gemma 3 needs lr 0.12 for the step 3e-3 gives without it)."
        },
    )
    weight_init: WeightInit = field(
        default=WeightInit.NORMAL,
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
        check_positive_int("m", self.m, ": the paper uses m=128")
        if self.token_ids is not None:
            self.token_ids = check_int_list("token_ids", self.token_ids)
            if len(self.token_ids) != self.m:
                raise ValueError(
                    f"{len(self.token_ids)} token_ids were given but m={self.m}: pass m={len(self.token_ids)}."
                )
            if min(self.token_ids) < 0:
                raise ValueError(f"token_ids must be >= 0, got {min(self.token_ids)}.")
            duplicates = sorted({i for i in self.token_ids if self.token_ids.count(i) > 1})
            if duplicates:
                raise ValueError(f"token_ids must be unique; repeated: {duplicates[:10]}.")
        check_bool("use_softmax", self.use_softmax)
        if self.use_softmax and self.m == 1:
            raise ValueError(
                "use_softmax=True with m=1: the softmax of a single weight is always 1, so p' would never train. "
                "Use m > 1, or use_softmax=False."
            )
        choices = tuple(choice.value for choice in WeightInit)
        if self.weight_init not in choices:
            raise ValueError(f"weight_init must be one of {choices}, got {self.weight_init!r}.")
        self.weight_init = WeightInit(self.weight_init)
        if self.weight_init is WeightInit.ONE_HOT and self.num_virtual_tokens > self.m:
            raise ValueError(
                f"weight_init='one_hot' gives each prompt its own sampled token, so it needs num_virtual_tokens "
                f"({self.num_virtual_tokens}) <= m ({self.m})."
            )
        if self.weight_init_std is not None:
            check_finite_positive("weight_init_std", self.weight_init_std)
