"""Length-grouped training order: batches of similar lengths, so dynamic padding pads little.

Measured on the SmolLM2 tokenizer, random batches of 8 are 25-48 % padding on MRPC, SST-2, CB and RTE;
grouped batches are a few per cent. Unlike ``transformers``' ``LengthGroupedSampler`` (which draws from the
global torch RNG at iteration time), the order here depends only on ``(seed, epoch)``, so a run resumed from a
checkpoint replays exactly the batches of an uninterrupted run, and 1 or N processes see the same global
batches (the sampler yields the global order; accelerate deals consecutive per-process batches).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

__all__ = ["LengthGroupedSampler", "padding_fraction"]


class LengthGroupedSampler(torch.utils.data.Sampler[int]):
    """Seeded random order in which every run of ``batch_size`` consecutive indices has similar lengths.

    Each epoch: a permutation drawn from ``seed + epoch``, cut into mega-batches of ``mega_batch_size``
    batches; each mega-batch is sorted by length (longest first) and cut into batches, and the batches of a
    mega-batch are shuffled so the order within it is no length curriculum.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int, mega_batch_size: int = 50) -> None:
        if batch_size <= 0 or mega_batch_size <= 0:
            raise ValueError("batch_size and mega_batch_size must be positive")
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.mega_batch_size = mega_batch_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Called by Trainer (through accelerate) at the start of every epoch."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.lengths), generator=generator).tolist()
        span = self.batch_size * self.mega_batch_size
        for start in range(0, len(order), span):
            mega = sorted(order[start : start + span], key=lambda i: -self.lengths[i])
            batches = [mega[i : i + self.batch_size] for i in range(0, len(mega), self.batch_size)]
            full = [b for b in batches if len(b) == self.batch_size]  # a short last batch stays last
            shuffled = [full[i] for i in torch.randperm(len(full), generator=generator).tolist()]
            for batch in shuffled + batches[len(full) :]:
                yield from batch


def padding_fraction(lengths: Sequence[int], batch_size: int, order: Sequence[int] | None = None) -> float:
    """Share of padding tokens when ``lengths`` are batched in ``order`` (default: as given) with dynamic
    padding to the longest row of each batch."""
    order = list(range(len(lengths))) if order is None else list(order)
    real = padded = 0
    for start in range(0, len(order), batch_size):
        batch = [lengths[i] for i in order[start : start + batch_size]]
        real += sum(batch)
        padded += max(batch) * len(batch)
    return 1.0 - real / padded if padded else 0.0
