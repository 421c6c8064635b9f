"""What every prompt method of this package shares: a cached prompt table, vocabulary sampling, and the
save/load hooks that keep the whole trainable state (not only the final table) in the saved adapter."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import nn

from .._peft_compat import BasePromptEncoder

PROMPT_TABLE_KEY = "prompt_embeddings"  # the key stock PROMPT_TUNING adapters use for the (n, d) table


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
    """A detached fp32 copy of the embedding rows at ``ids`` ``(k,)``: ``(k, d)``."""
    weight = word_embeddings.weight
    with torch.no_grad():
        return weight[ids.to(weight.device)].detach().float().clone()


def sample_vocabulary(
    config, word_embeddings: nn.Embedding, count: int, special_token_ids: Iterable[int] = ()
) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` ids sampled as ``config`` says (seed, sample_vocab_size, exclusions plus the model's special
    ids) and their fp32 embedding rows: ``(count,)``, ``(count, d)``."""
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


def check_fits_model(config, word_embeddings: nn.Embedding) -> None:
    """Refuse a base model whose embedding table differs from the one the adapter was made on."""
    rows, dim = word_embeddings.weight.shape
    if config.token_dim is not None and config.token_dim != dim:
        raise ValueError(
            f"This adapter was made for embeddings of size {config.token_dim}, but the model's are {dim}: load "
            "it onto the base model it was trained with."
        )
    saved_rows = getattr(config, "base_vocab_size", None)
    if saved_rows is not None and saved_rows != rows:
        raise ValueError(
            f"This adapter was made on an embedding table of {saved_rows} rows, but the model has {rows} (a "
            "different model, or resized token embeddings): load it onto the base model it was trained with."
        )
    config.base_vocab_size = rows


def check_same_embeddings(saved: torch.Tensor, current: torch.Tensor, model_dtype: torch.dtype) -> None:
    """The saved fp32 E_freeze must equal the model's rows up to the rounding of the model's dtype, so an
    adapter loads onto a bf16/fp16 copy of its base model but never onto another model."""
    if saved.shape != current.shape:
        raise ValueError(f"Saved frozen embeddings have shape {tuple(saved.shape)}, expected {tuple(current.shape)}.")
    eps = torch.finfo(model_dtype).eps if model_dtype.is_floating_point else 1e-2
    scale = saved.abs().max().clamp_min(1e-12)
    mismatch = (saved - current.float()).abs() > eps * saved.abs() + 1e-3 * eps * scale
    if mismatch.any():
        raise ValueError(
            f"The base model's embeddings differ from the ones this adapter was trained on ({int(mismatch.sum())} "
            "of the sampled values do not match): load the adapter onto the base model it was trained with."
        )


class PromptTable(nn.Module):
    """Holds ``weight`` ``(n, d)``: the prompt table peft reads in inference mode (``embedding.weight``)."""

    def __init__(self, num_tokens: int, dim: int) -> None:
        super().__init__()
        self.register_buffer("weight", torch.zeros(num_tokens, dim), persistent=False)


class PromptTableEncoder(BasePromptEncoder):
    """Base of our prompt encoders. Subclasses define ``compute_table() -> (n, d) fp32`` from their parameters.

    Forward maps prompt indices ``(B, n)`` to ``(B, n, d)`` in the model dtype. Without autograd (evaluation,
    generation) the table is computed once and reused until a parameter changes, so the prompt is free at
    inference. The saved adapter holds every tensor of ``state_dict()`` plus the final table under
    ``prompt_embeddings``, so training resumes exactly and the table exports to stock prompt tuning.
    """

    def __init__(self, config, word_embeddings: nn.Embedding) -> None:
        """Checks that ``word_embeddings`` fits ``config`` and sets ``num_tokens`` (n), ``dim`` (d) and the
        output dtype (the model's)."""
        super().__init__()
        check_fits_model(config, word_embeddings)
        self.num_tokens = config.num_virtual_tokens * config.num_transformer_submodules
        self.dim = word_embeddings.weight.shape[1]
        dtype = word_embeddings.weight.dtype
        self.output_dtype = dtype if dtype.is_floating_point else torch.float32
        self.embedding = PromptTable(self.num_tokens, self.dim)
        self._cache_key: tuple | None = None

    def compute_table(self) -> torch.Tensor:
        raise NotImplementedError

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The parameters an optimizer should see (all of this module's parameters by default)."""
        return list(self.parameters())

    def _state_key(self) -> tuple:
        tensors = list(self.parameters()) + [b for n, b in self.named_buffers() if n != "embedding.weight"]
        return tuple((t.data_ptr(), t._version, t.device) for t in tensors)

    def table(self) -> torch.Tensor:
        """The prompt table ``(n, d)`` in fp32; cached while autograd is off and nothing changed."""
        if torch.is_grad_enabled():
            self._cache_key = None
            return self.compute_table()
        key = self._state_key()
        if key != self._cache_key:
            # a copy: compute_table may return a parameter itself (DePT's soft prompt), which must not alias
            self.embedding.weight = self.compute_table().detach().clone()
            self._cache_key = key
        return self.embedding.weight

    def final_table(self, inference_mode: bool) -> torch.Tensor:
        """The table to save or export, ``(n, d)`` fp32 on the CPU: the loaded one in inference mode (peft
        reads ``embedding.weight`` then), else computed from the parameters."""
        with torch.no_grad():
            table = self.embedding.weight if inference_mode else self.table()
        return table.detach().float().cpu().contiguous()

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        return nn.functional.embedding(indices, self.table()).to(self.output_dtype)

    # -- peft's save/load hooks (BasePromptEncoder) ------------------------------------------------------
    @classmethod
    def _get_adapter_state_dict(cls, model, config, adapter_name, state_dict, unwanted_adapter_names):
        encoder: PromptTableEncoder = model.prompt_encoder[adapter_name]
        saved = {name: tensor.detach().cpu() for name, tensor in encoder.state_dict().items()}
        saved[PROMPT_TABLE_KEY] = encoder.final_table(config.inference_mode)
        return saved

    def _load_adapter_state_dict(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        expected = dict(self.state_dict())
        missing = sorted(set(expected) - set(state_dict)) + ([PROMPT_TABLE_KEY] * (PROMPT_TABLE_KEY not in state_dict))
        if missing:
            raise ValueError(
                f"The adapter file lacks {missing} for {type(self).__name__}: it was not saved by this version "
                "of peft_superpos, or it is damaged. Save the adapter again."
            )
        for name, tensor in expected.items():
            if tuple(state_dict[name].shape) != tuple(tensor.shape):
                raise ValueError(
                    f"Saved tensor {name!r} has shape {tuple(state_dict[name].shape)} but this model expects "
                    f"{tuple(tensor.shape)}: the adapter config and weights do not belong together."
                )
        self.check_loaded_state(state_dict)
        self.load_state_dict({name: state_dict[name] for name in expected}, strict=True)
        with torch.no_grad():
            self.embedding.weight = state_dict[PROMPT_TABLE_KEY].to(self.embedding.weight.device, torch.float32)
            recomputed = self.compute_table()
        if not torch.allclose(recomputed, self.embedding.weight, rtol=1e-3, atol=1e-5):
            raise ValueError(
                "The saved prompt table does not match the one computed from the saved parameters: the adapter "
                "file is damaged or was edited. Save the adapter again."
            )
        self._cache_key = None

    def check_loaded_state(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Subclasses check that saved tensors fit the base model (e.g. E_freeze against its embeddings)."""
