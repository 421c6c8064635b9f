"""DePT: a shorter soft prompt plus a low-rank, position-wise update of the input embeddings."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from ..prompt_table import PromptTableEncoder
from ..vocabulary import sample_vocabulary
from .config import DePTConfig


class DePTEmbedding(PromptTableEncoder):
    """The soft prompt ``soft_prompt`` P (n, d) plus the embedding update ``lora_embedding_A`` A (max_length, r)
    · ``lora_embedding_B`` B (r, d).

    The prompt goes through the usual prompt-table path. The update is applied by
    :meth:`adjust_input_embeds`, which ``peft_superpos._peft_compat`` calls on the input embeddings of every
    forward and generate path (before the prompt is prepended) through this module's forward.
    """

    not_exportable_reason = (
        "DePT also adds a learned low-rank update A·B to the input token embeddings, position by position, "
        "which a stock PROMPT_TUNING adapter (a prompt table only) cannot express."
    )

    def __init__(
        self, config: DePTConfig, word_embeddings: nn.Embedding, special_token_ids: Iterable[int] = ()
    ) -> None:
        super().__init__(config, word_embeddings)
        num_tokens, dim = self.num_tokens, self.dim
        _, initial = sample_vocabulary(config, word_embeddings, num_tokens, special_token_ids)
        generator = torch.Generator().manual_seed(config.seed + 1)
        lora_a = torch.randn(config.max_length, config.r, generator=generator) / math.sqrt(config.r)
        self.soft_prompt = nn.Parameter(initial)
        self.lora_embedding_A = nn.Parameter(lora_a.to(initial.device))
        self.lora_embedding_B = nn.Parameter(torch.zeros(config.r, dim, device=initial.device))
        self.max_length = config.max_length
        self.beyond_max_length = config.beyond_max_length
        self.align_to_attention_mask = config.align_to_attention_mask

    def table(self) -> torch.Tensor:
        return self.soft_prompt.float()

    def forward(
        self,
        indices: torch.Tensor | None = None,
        inference: bool = False,
        inputs_embeds: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The prompt rows of ``indices`` ``(B, n)``, or with ``inputs_embeds`` the input embeddings ``(B, L, d)``
        with the update (``adjust_input_embeds``): both in a call of this module, where ZeRO-3 and FSDP gather its
        parameters."""
        if inputs_embeds is not None:
            return self.adjust_input_embeds(inputs_embeds, attention_mask)
        return super().forward(indices, inference)

    def embedding_update(self) -> torch.Tensor:
        """``A B`` ``(max_length, d)`` in fp32: row j is added to the j-th input token's embedding."""
        return self.lora_embedding_A.float() @ self.lora_embedding_B.float()

    def adjust_input_embeds(
        self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Input embeddings ``(B, L, d)`` -> the same plus row ``j`` of ``A B`` at the input's ``j``-th token.

        With ``align_to_attention_mask`` and a 2-D ``attention_mask`` ``(B, L)``, ``j`` counts the kept tokens
        only and masked positions get nothing; otherwise ``j`` is the column. Raises a ValueError for more than
        ``max_length`` tokens unless ``beyond_max_length == "ignore"``.
        """
        batch, length, _ = inputs_embeds.shape
        device = inputs_embeds.device
        if (
            self.align_to_attention_mask
            and attention_mask is not None
            and attention_mask.dim() == 2
            and tuple(attention_mask.shape) == (batch, length)
        ):
            keep = attention_mask.to(device) != 0
            positions = keep.long().cumsum(dim=1) - 1
            needed = int(keep.sum(dim=1).max()) if length else 0
        else:
            keep = torch.ones(batch, length, dtype=torch.bool, device=device)
            positions = torch.arange(length, device=device).expand(batch, length)
            needed = length
        if needed > self.max_length:
            if self.beyond_max_length == "error":
                raise ValueError(
                    f"DePT's embedding update covers {self.max_length} input tokens (max_length) but this input has "
                    f"{needed}: shorten the input (e.g. truncate in the tokenizer), create the adapter with a larger "
                    "max_length, or set beyond_max_length='ignore' to leave the extra tokens without an update."
                )
            keep = keep & (positions < self.max_length)
        update = self.embedding_update().to(device)
        rows = update[positions.clamp(0, self.max_length - 1)] * keep.unsqueeze(-1)
        return (inputs_embeds.float() + rows).to(inputs_embeds.dtype)
