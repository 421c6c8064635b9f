"""Vocabulary ids for prompt initialisation: the model's special ids, reproducible sampling, and their embeddings
as the model sees them."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

SPECIAL_ID_ATTRIBUTES = (
    "pad_token_id",
    "bos_token_id",
    "eos_token_id",
    "unk_token_id",
    "sep_token_id",
    "cls_token_id",
    "mask_token_id",
    "decoder_start_token_id",
)


def special_token_ids(model: nn.Module) -> set[int]:
    """Ids the model config or generation config names as special (pad, bos, eos, ...)."""
    ids: set[int] = set()
    for config in (getattr(model, "config", None), getattr(model, "generation_config", None)):
        for attribute in SPECIAL_ID_ATTRIBUTES:
            value = getattr(config, attribute, None)
            values = value if isinstance(value, (list, tuple)) else [value]
            ids.update(int(v) for v in values if isinstance(v, int) and v >= 0)
    return ids


def sample_token_ids(
    num_embeddings: int, m: int, seed: int, exclude: Iterable[int] = (), sample_vocab_size: int | None = None
) -> torch.Tensor:
    """``m`` unique ids from ``[0, sample_vocab_size or num_embeddings)`` minus ``exclude``, sorted, ``(m,)``."""
    upper = num_embeddings if sample_vocab_size is None else min(sample_vocab_size, num_embeddings)
    excluded = torch.tensor(sorted({i for i in exclude if 0 <= i < upper}), dtype=torch.long)
    candidates = torch.ones(upper, dtype=torch.bool)
    candidates[excluded] = False
    candidates = candidates.nonzero().squeeze(1)
    if m > len(candidates):
        raise ValueError(
            f"m={m} is larger than the usable vocabulary ({len(candidates)} ids of {upper} after removing "
            f"{len(excluded)} special/excluded ids): choose m <= {len(candidates)}."
        )
    generator = torch.Generator().manual_seed(seed)
    picked = candidates[torch.randperm(len(candidates), generator=generator)[:m]]
    return picked.sort().values


def embedding_rows(word_embeddings: nn.Embedding, ids: torch.Tensor) -> torch.Tensor:
    """The embeddings of ``ids`` ``(k,)`` as the model sees them, a detached fp32 copy ``(k, d)``.

    They come from the embedding module's forward, not its raw ``weight`` rows: Gemma's, mBART's (with
    ``scale_embedding``) and M2M100's modules multiply the rows by ``sqrt(d)`` there, and peft prepends the
    prompt to that output. For a plain ``nn.Embedding`` the two are the same values."""
    with torch.no_grad():
        return word_embeddings(ids.to(word_embeddings.weight.device)).detach().float().clone()


def sample_vocabulary(
    config, word_embeddings: nn.Embedding, count: int, special_token_ids: Iterable[int] = ()
) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` ids sampled as ``config`` says (seed, sample_vocab_size, exclusions plus the model's special
    ids) and their fp32 embeddings as the model sees them: ``(count,)``, ``(count, d)``."""
    exclude = set(special_token_ids) | set(config.exclude_token_ids or ())
    rows = word_embeddings.weight.shape[0]
    ids = sample_token_ids(rows, count, config.seed, exclude, config.sample_vocab_size)
    return ids, embedding_rows(word_embeddings, ids)


def check_token_ids(token_ids: list[int], num_embeddings: int) -> torch.Tensor:
    """Explicit ids as a ``(m,)`` tensor, or a ValueError naming the ids outside the embedding table."""
    bad = [i for i in token_ids if not 0 <= i < num_embeddings]
    if bad:
        raise ValueError(
            f"token_ids {bad[:10]} are outside the embedding table of {num_embeddings} rows: use ids in "
            f"[0, {num_embeddings})."
        )
    return torch.tensor(token_ids, dtype=torch.long)
