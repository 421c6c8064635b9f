"""What every prompt method of this package shares: the prompt table computed from the parameters at every
use, and the save/load hooks that keep the whole trainable state (not only the final table) in the saved
adapter and check it against the base model."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import NamedTuple

import torch
from torch import nn

from .._peft_compat import BasePromptEncoder
from ..distributed import (
    full_shape,
    full_value,
    gathered,
    inner_module,
    is_fsdp1_flattened,
    is_full,
    is_split,
    unwrapped,
)
from ..dropout import disable_dropout
from .vocabulary import special_token_ids

PROMPT_TABLE_KEY = "prompt_embeddings"  # the key stock PROMPT_TUNING adapters use for the (n, d) table
SAVED_FLOAT_DTYPE = torch.float32  # every floating tensor of a saved adapter (a lossless upcast)


def check_fits_model(config, word_embeddings: nn.Embedding) -> None:
    """Refuse a base model whose embedding table differs from the one the adapter was made on (its full shape, also
    when ZeRO-3 partitions it)."""
    rows, dim = full_shape(word_embeddings.weight)
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


class PromptTableView(NamedTuple):
    """What peft reads as ``prompt_encoder.embedding``: ``weight`` is the prompt table ``(n, d)``."""

    weight: torch.Tensor


class PromptTableEncoder(BasePromptEncoder):
    """Base of our prompt encoders. Subclasses define ``table() -> (n, d) fp32`` from their parameters.

    Forward maps prompt indices ``(B, n)`` to ``(B, n, d)`` in the model dtype. The table is computed from the
    parameters at every use, never cached: it costs about 2 ms on SmolLM2-135M next to a 2 s forward, and so
    it can never be stale (after ``.data`` edits, ``load_state_dict``, ``to()`` or an optimizer step). The saved
    adapter holds every tensor of ``state_dict()`` (floating ones as fp32) plus the final table under
    ``prompt_embeddings``, so training resumes exactly and the table exports to stock prompt tuning.
    """

    def __init__(self, config, word_embeddings: nn.Embedding) -> None:
        """Checks that ``word_embeddings`` fits ``config`` and sets ``num_tokens`` (n), ``dim`` (d) and the
        output dtype (the model's)."""
        super().__init__()
        self._created_shapes: dict[str, torch.Size] = {}
        check_fits_model(config, word_embeddings)
        self.num_tokens = config.num_virtual_tokens * config.num_transformer_submodules
        self.dim = full_shape(word_embeddings.weight)[1]
        dtype = word_embeddings.weight.dtype
        self.output_dtype = dtype if dtype.is_floating_point else torch.float32

    @classmethod
    def from_peft_model(cls, config, peft_model: nn.Module) -> PromptTableEncoder:
        """The encoder ``config`` describes, for the model peft wraps (``peft_model.base_model``): with
        ``config.disable_dropout`` its frozen backbone's dropout is switched off first, and the ids its config
        names as special (pad, bos, eos, ...) are never sampled."""
        base_model = peft_model.base_model
        if config.disable_dropout:
            disable_dropout(base_model)
        return cls(config, base_model.get_input_embeddings(), special_token_ids(base_model))

    def register_parameter(self, name: str, param: nn.Parameter | None) -> None:
        """nn.Module's, recording the shape a parameter is created with (FSDP1 registers flat shards of it later)."""
        super().register_parameter(name, param)
        if param is not None:
            self._created_shapes.setdefault(name, full_shape(param))

    def table(self) -> torch.Tensor:
        """The prompt table ``(n, d)`` in fp32, computed from the parameters now."""
        raise NotImplementedError

    def inference_table(self) -> torch.Tensor:
        """The table without training-time randomness (such as MLP dropout) ``(n, d)`` fp32: what inference
        uses, and what is saved and exported. The same as ``table()`` unless a subclass says otherwise."""
        return self.table()

    @property
    def embedding(self) -> PromptTableView:
        """What stock peft reads as ``embedding.weight`` (our ``get_prompt`` calls ``forward`` instead): the table
        for inference, computed now, with autograd when parameters require grad. It never draws random numbers,
        so reading it leaves a seeded training run unchanged. Parameters split across ranks are gathered (a
        collective)."""
        with self.whole_state():
            return PromptTableView(self.inference_table())

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The parameters an optimizer should see (all of this module's parameters by default)."""
        return list(self.parameters())

    def final_table(self) -> torch.Tensor:
        """The table to save or export: a copy, ``(n, d)`` fp32 on the CPU. Parameters split across ranks are
        gathered (a collective: call it on all ranks)."""
        with torch.no_grad(), self.whole_state():
            return _saved_copy(self.inference_table())

    def forward(self, indices: torch.Tensor, inference: bool = False) -> torch.Tensor:
        """Prompt indices ``(B, n)`` -> ``(B, n, d)`` in the model dtype: rows of ``table()``, or of
        ``inference_table()`` with ``inference`` (an adapter in inference mode)."""
        table = self.inference_table() if inference else self.table()
        return nn.functional.embedding(indices.to(table.device), table).to(self.output_dtype)

    def _tensors(self) -> dict[str, torch.Tensor]:
        return {**dict(self.named_parameters()), **dict(self.named_buffers())}

    def _whole_shape(self, name: str, tensor: torch.Tensor) -> torch.Size:
        return self._created_shapes.get(name, full_shape(tensor))

    def is_split(self) -> bool:
        """Whether ZeRO-3, FSDP2 or FSDP1 holds a parameter of this encoder split across ranks now."""
        return any(
            is_split(t) or (is_fsdp1_flattened(t) and t.shape != self._whole_shape(name, t))
            for name, t in self._tensors().items()
        )

    def holds_whole(self, given: Mapping[str, torch.Tensor] | None) -> bool:
        """Whether ``given`` (name -> tensor) holds every tensor of this encoder whole, as a consolidated state
        dict does."""
        return given is not None and all(
            is_full(given.get(name), self._whole_shape(name, t)) for name, t in self._tensors().items()
        )

    @contextlib.contextmanager
    def whole_state(self, given: Mapping[str, torch.Tensor] | None = None) -> Iterator[None]:
        """Inside, every parameter and buffer of this encoder holds its whole value, also when ZeRO-3 partitions
        or FSDP2 shards it: taken from ``given`` (name -> tensor, e.g. a consolidated state dict on rank 0) when
        it ``holds_whole``; otherwise gathered, which is a collective (all ranks together). A no-op for an
        encoder that is not split. FSDP1 flat shards are gathered only for the encoder's own FSDP unit, by
        ``_get_adapter_state_dict``."""
        tensors = self._tensors()
        if not self.is_split():
            yield
        elif self.holds_whole(given):
            with _replaced(self, {name: _like(given[name], t) for name, t in tensors.items()}):
                yield
        elif any(is_fsdp1_flattened(t) for t in tensors.values()):
            raise ValueError(
                "FSDP1 holds this prompt encoder's parameters as flat shards, which it gathers only for its own "
                "unit: wrap the model with peft's auto-wrap policy (FullyShardedDataParallel(model, auto_wrap_policy="
                "peft.utils.other.fsdp_auto_wrap_policy(model), ...)), which gives the encoder its own unit, or call "
                "this inside FullyShardedDataParallel.summon_full_params(fsdp_model, recurse=False, writeback=False)."
            )
        else:
            with gathered(self.parameters()):
                with _replaced(self, {name: _like(full_value(t), t) for name, t in tensors.items()}):
                    yield

    def saved_state(self, given: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """What the adapter file holds for this encoder: every tensor of ``state_dict()`` (floating ones as fp32)
        and the final table under ``prompt_embeddings``, as CPU copies; whole values as ``whole_state(given)``
        reads them."""
        with torch.no_grad(), self.whole_state(given):
            saved = {name: _saved_copy(tensor) for name, tensor in self.state_dict().items()}
            saved[PROMPT_TABLE_KEY] = _saved_copy(self.inference_table())
        return saved

    # -- peft's save/load hooks (BasePromptEncoder) ------------------------------------------------------
    @classmethod
    def _get_adapter_state_dict(cls, model, config, adapter_name, state_dict, unwanted_adapter_names):
        """``saved_state`` of the adapter's encoder. Its tensors come from ``state_dict`` (peft passes the model's,
        or the one given to ``save_pretrained``) when that holds them whole, as the consolidated state dict the
        Trainer saves from under ZeRO-3 does on rank 0; otherwise split ones are gathered (all ranks together)."""
        with unwrapped(model.prompt_encoder[adapter_name]) as encoder:  # an FSDP1 unit of its own: gathered
            return encoder.saved_state(_encoder_tensors(state_dict, adapter_name))

    @classmethod
    def refuse_partial_state_dict(cls, model, adapter_name: str, state_dict: Mapping[str, torch.Tensor]) -> None:
        """A ``state_dict`` given to ``save_pretrained`` must hold the whole tensors of the adapter's encoder when
        they are split across ranks: otherwise saving would gather them, a collective that the other ranks (which
        a caller such as the Trainer does not let save) never join, and the run would hang."""
        encoder = inner_module(model.prompt_encoder[adapter_name])
        if encoder.is_split() and not encoder.holds_whole(_encoder_tensors(state_dict, adapter_name)):
            raise ValueError(
                f"save_pretrained got a state_dict without the whole tensors of adapter {adapter_name!r}, whose "
                "parameters are split across ranks (DeepSpeed ZeRO-3 or FSDP): pass the consolidated state dict "
                "(DeepSpeed: stage3_gather_16bit_weights_on_model_save=true; FSDP: a FULL_STATE_DICT), or no "
                "state_dict and call save_pretrained on every rank (is_main_process=True on one)."
            )

    def _load_adapter_state_dict(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        expected = dict(self.state_dict())
        missing = sorted(set(expected) - set(state_dict)) + ([PROMPT_TABLE_KEY] * (PROMPT_TABLE_KEY not in state_dict))
        if missing:
            raise ValueError(
                f"The adapter file lacks {missing} for {type(self).__name__}: it was not saved by this version "
                "of peft_superpos, or it is damaged. Save the adapter again."
            )
        for name in [*expected, PROMPT_TABLE_KEY]:
            tensor = state_dict[name]
            if tensor.is_floating_point() and tensor.dtype != SAVED_FLOAT_DTYPE:
                raise ValueError(
                    f"The adapter file holds {name!r} as {str(tensor.dtype).removeprefix('torch.')}, but "
                    "peft_superpos saves float32: the file was converted to a lower precision, which changes the "
                    "prompt. Load the file as it was saved, or save the adapter again from the trained model."
                )
        for name, tensor in expected.items():
            if tuple(state_dict[name].shape) != tuple(tensor.shape):
                raise ValueError(
                    f"Saved tensor {name!r} has shape {tuple(state_dict[name].shape)} but this model expects "
                    f"{tuple(tensor.shape)}: the adapter config and weights do not belong together."
                )
        self.check_loaded_state(state_dict)
        self.load_state_dict({name: state_dict[name] for name in expected}, strict=True)
        saved_table = state_dict[PROMPT_TABLE_KEY].float().cpu()
        if not torch.allclose(self.final_table(), saved_table, rtol=1e-3, atol=1e-5):
            raise ValueError(
                "The saved prompt table does not match the one computed from the saved parameters: the adapter "
                "file is damaged or was edited. Save the adapter again."
            )

    def check_loaded_state(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Subclasses check that saved tensors fit the base model (e.g. E_freeze against its embeddings)."""


def _encoder_tensors(state_dict: Mapping[str, torch.Tensor], adapter_name: str) -> dict[str, torch.Tensor]:
    """The tensors of a PeftModel state dict that belong to the adapter's encoder, by the encoder's own names."""
    prefix = f"prompt_encoder.{adapter_name}."
    return {key.removeprefix(prefix): value for key, value in state_dict.items() if key.startswith(prefix)}


def _saved_copy(tensor: torch.Tensor) -> torch.Tensor:
    """A contiguous CPU copy of ``tensor`` as saved (floating as fp32): never a view of memory that an engine
    frees or re-partitions after the gather."""
    dtype = SAVED_FLOAT_DTYPE if tensor.is_floating_point() else tensor.dtype
    return tensor.detach().to("cpu", dtype, copy=True).contiguous()


def _like(value: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """``value`` requiring grad where ``original`` does: CPU matmul picks its kernel by it, and the table computed
    from whole values must come out bit for bit as from unsplit parameters."""
    return value.detach().requires_grad_() if original.requires_grad and not value.requires_grad else value


@contextlib.contextmanager
def _replaced(module: nn.Module, tensors: Mapping[str, torch.Tensor]) -> Iterator[None]:
    """Inside, the parameter or buffer ``name`` of ``module`` reads as ``tensors[name]`` (a dotted name for a
    submodule's); the originals are back on exit. Tensors that already are the module's are left in place."""
    originals = []
    for name, tensor in tensors.items():
        owner_name, _, attribute = name.rpartition(".")
        owner = module.get_submodule(owner_name)
        store = owner._parameters if attribute in owner._parameters else owner._buffers
        original = dict.__getitem__(store, attribute)
        if tensor is not original:
            originals.append((store, attribute, original))
            store[attribute] = tensor
    try:
        yield
    finally:
        for store, attribute, original in reversed(originals):
            store[attribute] = original
