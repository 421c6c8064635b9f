"""Parameters split across processes: DeepSpeed ZeRO-3 partitions (shape ``[0]`` on every rank, the real shape in
``ds_shape``), FSDP2 shards (``DTensor``) and FSDP1 flat shards. Their full shape, and their full values where and
when a caller needs them. Every gather here is a collective: all ranks must run it together. Plain tensors pass
through unchanged, and nothing here imports DeepSpeed unless it is already loaded (a ZeRO-3 parameter means it
is) or :func:`start_deepspeed_on_cpu` is called.

Starting the processes on a machine without GPUs: DeepSpeed needs its gloo group before ``TrainingArguments``
(:func:`start_deepspeed_on_cpu`), and accelerate (so the Trainer) runs FSDP on GPUs only
(:data:`ACCELERATE_FSDP_NEEDS_GPUS`)."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterable, Iterator

import torch
from torch import nn
from torch.distributed.fsdp import FullyShardedDataParallel
from torch.distributed.tensor import DTensor

ACCELERATE_FSDP_NEEDS_GPUS = "accelerate runs FSDP on GPUs only (on CPU it would silently train with plain DDP)"
"""Why FSDP through accelerate (``accelerate launch`` with an FSDP config, or the Trainer's ``fsdp``) is refused on
CPU; torch's FSDP itself runs there (README, "Scaling out")."""


def start_deepspeed_on_cpu() -> None:
    """Join the processes a launcher started (``deepspeed``, ``torchrun`` or ``accelerate launch``: ``RANK``,
    ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT`` set) into DeepSpeed's gloo group, for DeepSpeed on CPU:
    call it before ``TrainingArguments``, which on CPU does not start DeepSpeed's group itself. Skips the
    shared-memory all-reduce DeepSpeed otherwise compiles at every CPU start (about 80 s, used by inference only)."""
    import deepspeed
    import deepspeed.comm.torch  # noqa: F401  (loaded; as an attribute, deepspeed.comm.torch is the torch package)

    sys.modules["deepspeed.comm.torch"].build_shm_op = lambda: None
    deepspeed.init_distributed(dist_backend="gloo")


def is_zero3_partitioned(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` is a parameter that DeepSpeed ZeRO-3 manages (partitioned, or gathered for now)."""
    return hasattr(tensor, "ds_id")


def is_split(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` is split across ranks: a ZeRO-3 parameter or an FSDP2 ``DTensor``."""
    return is_zero3_partitioned(tensor) or isinstance(tensor, DTensor)


def full_shape(parameter: torch.Tensor) -> torch.Size:
    """The shape of the whole tensor, also for a ZeRO-3 partition (``ds_shape``) or an FSDP2 shard."""
    return getattr(parameter, "ds_shape", None) or parameter.shape


@contextlib.contextmanager
def gathered(parameters: Iterable[torch.Tensor]) -> Iterator[None]:
    """Inside, every ZeRO-3 parameter of ``parameters`` holds its full value on every rank (read-only: changes are
    not written back). A no-op for plain tensors. A collective under ZeRO-3: run it on all ranks together."""
    parameters = [p for p in parameters if is_zero3_partitioned(p)]
    if not parameters:
        yield
        return
    deepspeed = sys.modules["deepspeed"]
    with deepspeed.zero.GatheredParameters(parameters, modifier_rank=None):
        yield


def full_value(tensor: torch.Tensor) -> torch.Tensor:
    """A plain tensor with the whole value of ``tensor``: an FSDP2 ``DTensor`` is all-gathered (a collective: run
    it on all ranks together); any other tensor is returned as it is (gather ZeRO-3 ones with ``gathered``)."""
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def is_full(tensor: torch.Tensor | None, shape: torch.Size) -> bool:
    """Whether ``tensor`` is a plain (not sharded) tensor of ``shape``: e.g. a value from a consolidated state dict
    rather than the local partition or shard of this rank."""
    return (
        isinstance(tensor, torch.Tensor)
        and not isinstance(tensor, DTensor)
        and not is_zero3_partitioned(tensor)
        and tuple(tensor.shape) == tuple(shape)
    )


def is_fsdp1_flattened(tensor: torch.Tensor) -> bool:
    """Whether FSDP1 manages ``tensor`` (outside a forward or ``summon_full_params`` it is a flat shard)."""
    return getattr(tensor, "_fsdp_flattened", False)


def inner_module(module: nn.Module) -> nn.Module:
    """The module an FSDP1 unit wraps (its parameters as they are now); any other module itself."""
    return module.module if isinstance(module, FullyShardedDataParallel) else module


@contextlib.contextmanager
def unwrapped(module: nn.Module) -> Iterator[nn.Module]:
    """``inner_module(module)``, for an FSDP1 unit with its parameters whole inside (a collective: all ranks
    together)."""
    if not isinstance(module, FullyShardedDataParallel):
        yield module
        return
    with FullyShardedDataParallel.summon_full_params(module, recurse=False, writeback=False):
        yield module.module
