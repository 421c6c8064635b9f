"""SuperPos-Prompt: every prompt token is a trained superposition of frozen vocabulary embeddings."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import torch
from torch import nn

from ...distributed import full_shape
from ..prompt_table import PromptTableEncoder
from ..vocabulary import check_token_ids, embedding_rows, sample_vocabulary
from .config import SuperPosPromptConfig, WeightInit

_HALF_DTYPES = (torch.bfloat16, torch.float16)


def init_std(config: SuperPosPromptConfig) -> float:
    """The std of p' at creation for the ``normal`` and ``uniform`` inits."""
    return config.weight_init_std if config.weight_init_std is not None else 1.0 / math.sqrt(config.m)


def expected_weight_l1(config: SuperPosPromptConfig) -> float:
    """The expected Σ_j |p'_ij| of a prompt at creation (1 for ``one_hot``, and for the weights softmax(p'_i) of
    ``use_softmax``). Under AdamW, the path of a prompt's step through ΔE is a free prompt table's at ``lr`` times
    this (``optim.prompt_step_size`` measures it; p' moves the prompt too): about 9.0 for the ``normal`` init at
    m=128, growing as sqrt(m)."""
    if config.use_softmax or config.weight_init is WeightInit.ONE_HOT:
        return 1.0
    mean_abs = math.sqrt(2 / math.pi) if config.weight_init is WeightInit.NORMAL else math.sqrt(3) / 2  # E|x| / std
    return config.m * init_std(config) * mean_abs


def init_superposition_weights(config: SuperPosPromptConfig, num_tokens: int) -> torch.Tensor:
    """p' at creation, ``(n, m)``, reproducible from ``config.seed``."""
    m = config.m
    if config.weight_init is WeightInit.ONE_HOT:
        return torch.eye(num_tokens, m)
    std = init_std(config)
    generator = torch.Generator().manual_seed(config.seed + 1)
    if config.weight_init is WeightInit.NORMAL:
        return torch.randn(num_tokens, m, generator=generator) * std
    half_width = std * math.sqrt(3.0)  # U(-a, a) has std a / sqrt(3)
    return (torch.rand(num_tokens, m, generator=generator) * 2 - 1) * half_width


def values_precision(values: torch.Tensor) -> torch.dtype:
    """The coarsest of bf16, fp16 and fp32 that holds every value of ``values`` exactly: the precision of the
    model the values were read from (fp32 values of an fp32 model are never all bf16- or fp16-exact)."""
    for dtype in _HALF_DTYPES:
        if torch.equal(values.to(dtype).float(), values.float()):
            return dtype
    return torch.float32


def check_same_embeddings(saved: torch.Tensor, current: torch.Tensor, model_dtype: torch.dtype) -> None:
    """The saved E_freeze ``(m, d)`` must equal the model's rows ``(m, d)`` at the coarser of two precisions: the
    one the saved values carry (the model they were read from) and ``model_dtype``. So an adapter made on any
    float copy of a base model (fp32, bf16, fp16) loads onto any other, but never onto another model."""
    if saved.shape != current.shape:
        raise ValueError(f"Saved frozen embeddings have shape {tuple(saved.shape)}, expected {tuple(current.shape)}.")
    eps = max(
        torch.finfo(values_precision(saved)).eps,
        torch.finfo(model_dtype).eps if model_dtype.is_floating_point else 1e-2,
    )
    saved = saved.float()
    scale = saved.abs().max().clamp_min(1e-12)
    mismatch = (saved - current.float()).abs() > eps * saved.abs() + 1e-3 * eps * scale
    if mismatch.any():
        raise ValueError(
            f"The base model's embeddings differ from the ones this adapter was trained on ({int(mismatch.sum())} "
            "of the sampled values do not match): load the adapter onto the base model it was trained with."
        )


class SuperPosPromptEmbedding(PromptTableEncoder):
    """``p_i = (E_freeze + ΔE_i)ᵀ p'_i`` for i < n, computed in fp32.

    Buffers: ``token_ids`` (m,), ``frozen_embeddings`` E_freeze (m, d), never trained.
    Parameters: ``delta`` ΔE (n, m, d), zeros at start; ``weights`` p' (n, m).
    Weight decay on ``delta`` pulls each E_i back towards the pretrained embeddings, not towards zero.
    """

    def __init__(
        self, config: SuperPosPromptConfig, word_embeddings: nn.Embedding, special_token_ids: Iterable[int] = ()
    ) -> None:
        super().__init__(config, word_embeddings)
        num_tokens = self.num_tokens
        if config.token_ids is None:
            ids, frozen = sample_vocabulary(config, word_embeddings, config.m, special_token_ids)
            config.token_ids = ids.tolist()
        else:
            ids = check_token_ids(config.token_ids, full_shape(word_embeddings.weight)[0])
            frozen = embedding_rows(word_embeddings, ids)
        self.use_softmax = config.use_softmax
        self.register_buffer("token_ids", ids)
        self.register_buffer("frozen_embeddings", frozen)
        self.delta = nn.Parameter(torch.zeros(num_tokens, config.m, self.dim, device=frozen.device))
        self.weights = nn.Parameter(init_superposition_weights(config, num_tokens).to(frozen.device))
        self._model_dtype = word_embeddings.weight.dtype

    def table(self) -> torch.Tensor:
        weights = self.weights.float()
        if self.use_softmax:
            weights = weights.softmax(dim=-1)
        # (E + ΔE_i)ᵀ p'_i, split so the (n, m, d) sum E + ΔE is never materialised
        shared = weights @ self.frozen_embeddings.float()
        return shared + torch.einsum("nm,nmd->nd", weights, self.delta.float())

    def check_loaded_state(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        if not torch.equal(state_dict["token_ids"].cpu(), self.token_ids.cpu()):
            raise ValueError(
                "The token_ids in the adapter weights differ from those in adapter_config.json: the files do not "
                "belong together. Save the adapter again."
            )
        check_same_embeddings(state_dict["frozen_embeddings"].cpu(), self.frozen_embeddings.cpu(), self._model_dtype)
