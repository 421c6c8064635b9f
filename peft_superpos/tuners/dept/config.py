"""Configuration of DePT: Decomposed Prompt Tuning (Shi & Lipani, ICLR 2024, arXiv 2309.05173)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..._peft_compat import PeftType
from ..prompt_config import PromptMethodConfig, check_bool, check_finite_positive, check_positive_int

BEYOND_MAX_LENGTH: tuple[str, ...] = ("error", "ignore")


@dataclass
class DePTConfig(PromptMethodConfig):
    """DePT splits a soft prompt into a shorter prompt ``P`` (n x d) prepended to the input, and a low-rank
    update ``A·B`` (``A``: max_length x r, ``B``: r x d) added position by position to the input embeddings:
    token j of the input gets ``E[x_j] + (A B)[j]``. The prompt tokens themselves get no update, and neither
    do decoder tokens nor tokens produced by ``generate``.

    ``P`` starts as the embeddings of ``n`` vocabulary ids sampled from ``seed`` (special ids skipped), ``A``
    as N(0, 1/r) (seeded), ``B`` as zeros, so a new adapter is exactly prompt tuning with ``P``. Trainable
    parameters: ``n·d + max_length·r + r·d`` (the paper matches the budget of a 100-token prompt on T5-Base, d=768,
    with n=60, r=30, max_length=256).

    Position dependence: row j of ``A B`` belongs to the j-th token of the input. By default (
    ``align_to_attention_mask``) j counts only the tokens the attention mask keeps, so left and right padding
    give every real token the same row (for right-padded inputs this is the paper's column index); padding
    positions get no update. An input with more than ``max_length`` (real) tokens raises a ValueError, or,
    with ``beyond_max_length="ignore"``, its tokens from position ``max_length`` on keep their plain
    embeddings (the input itself is never cut).

    DePT trains the two parts with two learning rates (paper: ``prompt_lr`` in {3e-1, 4e-1, 5e-1},
    ``lora_lr`` in {1e-4, 5e-4, 1e-3}): pass ``config.lr_by_name()`` as ``lr_by_name`` to
    ``peft_superpos.make_param_groups``.

    DePT does not reduce to a plain prompt table, so ``export_prompt_tuning`` refuses it.
    """

    num_virtual_tokens: int = field(default=60, metadata={"help": "Number of prompt tokens n (paper: 60)."})
    r: int = field(default=30, metadata={"help": "Rank r of the embedding update A·B (paper: 30 for n=60)."})
    max_length: int = field(
        default=256,
        metadata={"help": "Rows of A: the longest input (in tokens) the update covers (paper: 256)."},
    )
    beyond_max_length: str = field(
        default="error",
        metadata={
            "help": "What to do with an input longer than max_length: 'error' raises a ValueError; 'ignore' "
            "updates its first max_length tokens and leaves the rest as plain embeddings."
        },
    )
    align_to_attention_mask: bool = field(
        default=True,
        metadata={
            "help": "Count positions over the tokens the attention mask keeps (padding-invariant, padding gets "
            "no update). When False, or without a mask, row j goes to column j of the input tensor."
        },
    )
    prompt_lr: float = field(default=3e-1, metadata={"help": "Learning rate of the soft prompt P (paper: 3e-1)."})
    lora_lr: float = field(default=1e-4, metadata={"help": "Learning rate of A and B (paper: 1e-4)."})

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = PeftType.DEPT
        check_positive_int("r", self.r)
        check_positive_int("max_length", self.max_length)
        if self.beyond_max_length not in BEYOND_MAX_LENGTH:
            raise ValueError(f"beyond_max_length must be one of {BEYOND_MAX_LENGTH}, got {self.beyond_max_length!r}.")
        check_bool("align_to_attention_mask", self.align_to_attention_mask)
        check_finite_positive("prompt_lr", self.prompt_lr)
        check_finite_positive("lora_lr", self.lora_lr)

    def lr_by_name(self, adapter_name: str | None = None) -> dict[str, float]:
        """``{parameter-name part: learning rate}`` for ``make_param_groups(model, wd, lr_by_name=...)``: the
        soft prompt gets ``prompt_lr``, ``A`` and ``B`` get ``lora_lr``. Give ``adapter_name`` to match only
        that adapter's parameters when a model holds several DePT adapters."""
        prefix = f"prompt_encoder.{adapter_name}." if adapter_name is not None else "."
        return {
            f"{prefix}soft_prompt": float(self.prompt_lr),
            f"{prefix}lora_embedding_A": float(self.lora_lr),
            f"{prefix}lora_embedding_B": float(self.lora_lr),
        }
