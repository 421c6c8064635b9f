"""Residual Prompt Tuning: a prompt table reparameterised by a shallow MLP with a skip connection."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from ..prompt_table import PromptTableEncoder
from ..vocabulary import sample_vocabulary
from .config import ResidualPromptConfig


def _linear_init(shape: tuple[int, ...], fan_in: int, generator: torch.Generator) -> torch.Tensor:
    """``nn.Linear``'s default init, U(-1/sqrt(fan_in), 1/sqrt(fan_in)), drawn from ``generator``."""
    bound = 1.0 / math.sqrt(fan_in)
    return (torch.rand(shape, generator=generator) * 2 - 1) * bound


class ResidualPromptEmbedding(PromptTableEncoder):
    """``P'_i = P_i + LN(W2_k ReLU(W1_k P_i + b1_k) + b2_k)`` for every prompt token i, computed in fp32.

    Parameters: ``prompt`` P (n, d), vocabulary-initialised; ``down_weight`` W1 (k, d, b), ``down_bias`` (k, b),
    ``up_weight`` W2 (k, b, d), ``up_bias`` (k, d), and with LayerNorm ``norm_weight``/``norm_bias`` (k, d);
    ``k`` is 1 (one shared MLP) or n (``separate_mlps``). ``P'`` is a plain prompt table, so the adapter exports
    to stock prompt tuning.
    """

    def __init__(
        self, config: ResidualPromptConfig, word_embeddings: nn.Embedding, special_token_ids: Iterable[int] = ()
    ) -> None:
        super().__init__(config, word_embeddings)
        num_tokens, dim = self.num_tokens, self.dim
        _, initial = sample_vocabulary(config, word_embeddings, num_tokens, special_token_ids)
        device = initial.device
        k, b = (num_tokens if config.separate_mlps else 1), config.bottleneck_size
        generator = torch.Generator().manual_seed(config.seed + 1)
        self.prompt = nn.Parameter(initial)
        self.down_weight = nn.Parameter(_linear_init((k, dim, b), dim, generator).to(device))
        self.down_bias = nn.Parameter(_linear_init((k, b), dim, generator).to(device))
        self.up_weight = nn.Parameter(_linear_init((k, b, dim), b, generator).to(device))
        self.up_bias = nn.Parameter(_linear_init((k, dim), b, generator).to(device))
        self.use_layer_norm = config.use_layer_norm
        if self.use_layer_norm:
            self.norm_weight = nn.Parameter(torch.ones(k, dim, device=device))
            self.norm_bias = nn.Parameter(torch.zeros(k, dim, device=device))
        self.mlp_dropout = float(config.mlp_dropout)

    def table(self) -> torch.Tensor:
        return self._residual_table(dropout=bool(self.mlp_dropout) and self.training and torch.is_grad_enabled())

    def inference_table(self) -> torch.Tensor:
        return self._residual_table(dropout=False)

    def _residual_table(self, dropout: bool) -> torch.Tensor:
        """``P + LN(W2 ReLU(W1 P + b1) + b2)`` ``(n, d)`` in fp32, with MLP dropout when ``dropout``."""
        prompt = self.prompt.float()  # (n, d)
        # (n, 1, d) @ (k, d, b) broadcasts k = 1 (shared MLP) or k = n (one MLP per token)
        hidden = (prompt.unsqueeze(1) @ self.down_weight.float()).squeeze(1) + self.down_bias.float()
        hidden = torch.relu(hidden)
        if dropout:
            hidden = nn.functional.dropout(hidden, self.mlp_dropout, training=True)
        out = (hidden.unsqueeze(1) @ self.up_weight.float()).squeeze(1) + self.up_bias.float()
        if self.use_layer_norm:
            out = nn.functional.layer_norm(out, (out.shape[-1],)) * self.norm_weight.float() + self.norm_bias.float()
        return prompt + out
