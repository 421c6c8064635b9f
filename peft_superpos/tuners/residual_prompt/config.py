"""Configuration of Residual Prompt Tuning (Razdaibiedina et al., ACL Findings 2023)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..._peft_compat import PeftType
from ..prompt_config import PromptMethodConfig, check_bool, check_positive_int


@dataclass
class ResidualPromptConfig(PromptMethodConfig):
    """Residual Prompt Tuning: a prompt table ``P`` (n x d) passed through a shallow network with a skip
    connection, ``P' = P + LN(W2 ReLU(W1 P + b1) + b2)``, computed row by row (each prompt token on its own).

    ``P`` starts as the input embeddings of ``n`` unique vocabulary ids sampled from ``seed`` (special ids
    skipped). ``W1`` is ``d x bottleneck_size``, ``W2`` is ``bottleneck_size x d``; with ``separate_mlps`` every
    prompt token has its own ``W1, b1, W2, b2`` (and LayerNorm). The network is only a reparameterisation for
    training: the final table ``P'`` is a plain prompt table, so ``export_prompt_tuning`` turns a trained
    adapter into a stock PROMPT_TUNING one.

    Trainable parameters: ``n·d + k·(2·d·b + b + d) [+ k·2·d with LayerNorm]`` where ``k`` is 1 (shared MLP)
    or ``n`` (``separate_mlps``).

    Settings of the paper, for comparison runs: learning rate 0.3, weight decay 0.01 (AdamW), bottleneck
    400 for T5 (the SuperPos-Prompt paper compares against bottleneck 128, the default here), LayerNorm on,
    one MLP shared by all tokens.
    """

    num_virtual_tokens: int = field(default=10, metadata={"help": "Number of prompt tokens n."})
    bottleneck_size: int = field(
        default=128,
        metadata={
            "help": "Hidden width of the reparameterisation MLP. 128 is the setting the SuperPos-Prompt paper "
            "compares with; the Residual Prompt Tuning paper uses a larger one (400 for T5)."
        },
    )
    use_layer_norm: bool = field(
        default=True, metadata={"help": "Apply LayerNorm (with affine weight and bias) to the MLP output."}
    )
    separate_mlps: bool = field(
        default=False,
        metadata={"help": "Give every prompt token its own MLP instead of one MLP shared by all tokens."},
    )
    mlp_dropout: float = field(
        default=0.0,
        metadata={
            "help": "Dropout after the ReLU of the MLP. It is active only in train mode with autograd on; the "
            "table computed without autograd (cached for evaluation and generation, saved, exported) is "
            "always the dropout-free one, so the prompt seen at inference never depends on a dropout draw."
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = PeftType.RESIDUAL_PROMPT
        check_positive_int("bottleneck_size", self.bottleneck_size, " (the SuperPos-Prompt paper compares with 128)")
        check_bool("use_layer_norm", self.use_layer_norm)
        check_bool("separate_mlps", self.separate_mlps)
        dropout = self.mlp_dropout
        if isinstance(dropout, (bool, str)) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
            raise ValueError(f"mlp_dropout must be a number in [0, 1), got {dropout!r}.")
