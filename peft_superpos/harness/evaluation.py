"""Evaluation of a task model: greedy generation (the paper's protocol), rank classification, or a
classification head.

* ``generate``: greedy decoding of at most (longest label word + 1) tokens, parsed with
  ``task.parse_prediction``; text that is no label word is invalid, counts as wrong and is reported as
  ``invalid_rate``.
* ``rank``: every string of ``task.choices`` (plus eos) is scored by the sum of its token log-likelihoods
  given the source; the best one is the prediction, so there are no invalid predictions.
* ``classify`` (sequence-classification models): the arg-max class (STS-B: the regression output).

Examples are batched in order of length (longest first) so batches pad little; predictions are put back in
dataset order before scoring. :func:`evaluate` returns the task metrics (``score`` = mean of the task's
metrics), the predicted-class counts (a collapse to one class shows as ``majority_pred_share`` near 100), the
padding share of the evaluation batches, and one record per example (id, gold, prediction or the raw invalid
text). Under ``torch.distributed`` each process evaluates every ``world_size``-th example and the predictions
are gathered, so every process returns the same result. The processes run in lockstep, as ZeRO-3 and FSDP need
(every forward gathers parameters from all of them): each runs as many examples (a process with fewer repeats
one and drops its result), hence as many batches, and generation runs with ``synced_gpus`` (as many decoding
steps); an FSDP1 root unit is generated from with its parameters whole (``summon_full_params``, as
``Seq2SeqTrainer`` does).
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.distributed.fsdp import FullyShardedDataParallel

from ..metrics import compute_metrics

# Re-exported for benchmarks/quality_report.py until it imports them from peft_superpos.metrics.
from ..metrics.floors import best_constant_prediction, constant_prediction_floor  # noqa: F401
from .config import EVAL_MODES
from .features import (
    IGNORE_INDEX,
    ClassificationFeatures,
    TextToTextCollator,
    TextToTextFeatures,
    label_logits,
    last_positions,
)

__all__ = [
    "EVAL_MODES",
    "EvalResult",
    "classify_predictions",
    "evaluate",
    "generate_predictions",
    "rank_predictions",
    "sequence_logprobs",
]

INVALID = "invalid"


@dataclass
class PaddingCount:
    """Real and padded token counts of a series of batches."""

    real: int = 0
    total: int = 0

    def add(self, attention_mask: torch.Tensor) -> None:
        self.real += int(attention_mask.sum())
        self.total += attention_mask.numel()

    @property
    def fraction(self) -> float:
        return 1.0 - self.real / self.total if self.total else 0.0


@dataclass
class EvalResult:
    """``metrics`` (what metrics.jsonl logs) and ``records`` (one dict per example, in dataset order)."""

    metrics: dict[str, Any]
    records: list[dict[str, Any]] = field(default_factory=list)


def _length_sorted_batches(lengths: Sequence[int], size: int) -> Iterator[list[int]]:
    """Positions of ``lengths`` in batches of ``size``, longest first."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    for start in range(0, len(order), size):
        yield order[start : start + size]


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def sequence_logprobs(model: torch.nn.Module, batch: dict[str, torch.Tensor], is_encoder_decoder: bool) -> torch.Tensor:
    """Summed log-likelihood of the label tokens of every row ``(B,)`` (see :func:`.features.label_logits`)."""
    _, logits, targets = label_logits(model, batch, is_encoder_decoder)
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    mask = targets != IGNORE_INDEX
    picked = logprobs.gather(-1, targets.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    return (picked * mask).sum(-1)


@torch.no_grad()
def rank_predictions(
    model: torch.nn.Module,
    features: TextToTextFeatures,
    sources: Sequence[str],
    choices: Sequence[str],
    batch_size: int,
    padding: PaddingCount | None = None,
) -> list[int]:
    """Index of the best-scoring choice for every source (each (source, choice) pair is one row)."""
    collator = TextToTextCollator(features.pad_id, features.is_encoder_decoder)
    pairs = [features.encode(s, c) for s in sources for c in choices]
    scores = torch.empty(len(sources) * len(choices))
    device = _device(model)
    for rows in _length_sorted_batches([len(p["input_ids"]) for p in pairs], batch_size):
        batch = {k: v.to(device) for k, v in collator([pairs[r] for r in rows]).items()}
        if padding is not None:
            padding.add(batch["attention_mask"])
        scores[rows] = sequence_logprobs(model, batch, features.is_encoder_decoder).cpu()
    return scores.view(len(sources), len(choices)).argmax(dim=1).tolist()


@torch.no_grad()
def generate_predictions(
    model: torch.nn.Module,
    features: TextToTextFeatures,
    sources: Sequence[str],
    max_new_tokens: int,
    batch_size: int,
    padding: PaddingCount | None = None,
) -> list[str]:
    """Greedy generations (decoded, special tokens removed) for every source."""
    collator = TextToTextCollator(features.pad_id, features.is_encoder_decoder)
    tokenizer = features.tokenizer
    device = _device(model)
    inputs = [{"input_ids": features.source_ids(s)} for s in sources]
    texts: list[str] = [""] * len(sources)
    # Decoders: the LM head on the last position only, as generate's own default (the int 1) does, but as a
    # contiguous copy (see last_positions).
    keep = {} if features.is_encoder_decoder else {"logits_to_keep": last_positions(1, device)}
    for rows in _length_sorted_batches([len(f["input_ids"]) for f in inputs], batch_size):
        batch = {k: v.to(device) for k, v in collator([inputs[r] for r in rows]).items()}
        if padding is not None:
            padding.add(batch["attention_mask"])
        output = model.generate(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            pad_token_id=features.pad_id,
            eos_token_id=features.eos_id,
            synced_gpus=_world_size() > 1,  # every process decodes until all are done (see the module doc)
            **keep,
        )
        if not features.is_encoder_decoder and output.shape[1] >= batch["input_ids"].shape[1]:
            if torch.equal(output[:, : batch["input_ids"].shape[1]], batch["input_ids"]):
                output = output[:, batch["input_ids"].shape[1] :]
        for row, text in zip(rows, tokenizer.batch_decode(output, skip_special_tokens=True), strict=True):
            texts[row] = text
    return texts


@torch.no_grad()
def classify_predictions(
    model: torch.nn.Module,
    features: ClassificationFeatures,
    sources: Sequence[str],
    batch_size: int,
    padding: PaddingCount | None = None,
) -> list[int | float]:
    """Arg-max class of a sequence-classification model for every source (regression: the output value)."""
    collator = features.collator()
    device = _device(model)
    inputs = [{"input_ids": features.source_ids(s)} for s in sources]
    predictions: list[int | float] = [0] * len(sources)
    for rows in _length_sorted_batches([len(f["input_ids"]) for f in inputs], batch_size):
        batch = {k: v.to(device) for k, v in collator([inputs[r] for r in rows]).items()}
        if padding is not None:
            padding.add(batch["attention_mask"])
        logits = model(**batch).logits.float().cpu()
        values = logits[:, 0].tolist() if features.task.is_regression else logits.argmax(-1).tolist()
        for row, value in zip(rows, values, strict=True):
            predictions[row] = value
    return predictions


def _is_distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _world_size() -> int:
    return torch.distributed.get_world_size() if _is_distributed() else 1


def _share(size: int) -> tuple[list[int], int]:
    """The dataset positions this process evaluates (every ``world_size``-th) and how many examples it runs: the
    same number on every process (the largest share)."""
    rank, world = (torch.distributed.get_rank(), _world_size()) if _is_distributed() else (0, 1)
    return list(range(rank, size, world)), -(-size // world)


@contextlib.contextmanager
def _whole_for_generation(model: torch.nn.Module, mode: str) -> Iterator[None]:
    """An FSDP1 root unit's parameters gathered whole on every process while it generates (``generate`` does not
    go through the unit's forward); anything else as it is."""
    if mode != "generate" or not isinstance(model, FullyShardedDataParallel):
        yield
        return
    with FullyShardedDataParallel.summon_full_params(model, writeback=False):
        yield


def _gather(values: list[Any], indices: list[int]) -> tuple[list[Any], list[int]]:
    if not _is_distributed():
        return values, indices
    world = torch.distributed.get_world_size()
    gathered: list[Any] = [None] * world
    torch.distributed.all_gather_object(gathered, (values, indices))
    merged = sorted(
        (i, v) for part_values, part_indices in gathered for v, i in zip(part_values, part_indices, strict=True)
    )
    return [v for _, v in merged], [i for i, _ in merged]


def _prediction_word(task: Any, prediction: int | float | None) -> str:
    if prediction is None:
        return INVALID
    return task.target_for(prediction)


def prediction_counts(task: Any, predictions: Sequence[int | float | None]) -> dict[str, Any]:
    """``pred_counts`` (label word -> count, ``invalid`` for invalid outputs; STS-B: the rounded score) and
    ``majority_pred_share`` (percentage of the most frequent prediction: 100 means one class for all)."""
    counts = Counter(_prediction_word(task, p) for p in predictions)
    ordered = {word: counts[word] for word in (*task.choices, INVALID) if counts.get(word)}
    share = 100.0 * max(counts.values()) / len(predictions) if predictions else 0.0
    return {"pred_counts": ordered, "majority_pred_share": share}


def evaluate(
    model: torch.nn.Module,
    features: TextToTextFeatures | ClassificationFeatures,
    task: Any,
    dataset: Any,
    mode: str = "generate",
    batch_size: int = 16,
) -> EvalResult:
    """Metrics and per-example records of ``model`` on ``dataset`` (columns source/target/label(/group)); the
    model is left in eval mode only for the duration of the call."""
    if mode not in EVAL_MODES:
        raise ValueError(f"unknown eval mode {mode!r}; expected one of {EVAL_MODES}")
    if (mode == "classify") != isinstance(features, ClassificationFeatures):
        raise ValueError(f"eval mode {mode!r} does not fit a {type(features).__name__}")
    indices, share = _share(len(dataset))
    sources = [dataset[i]["source"] for i in indices]
    sources += [dataset[indices[0] if indices else 0]["source"]] * (share - len(indices))  # lockstep: dropped
    padding = PaddingCount()
    was_training = model.training
    model.eval()
    start = time.perf_counter()
    try:
        with _whole_for_generation(model, mode):
            if mode == "classify":
                local: list[Any] = classify_predictions(model, features, sources, batch_size, padding)
            elif mode == "rank":
                choice_ids = rank_predictions(model, features, sources, task.choices, batch_size, padding)
                local = [task.choices[c] for c in choice_ids]
            else:
                longest = max(len(features.target_ids(c)) for c in task.choices)
                local = generate_predictions(model, features, sources, longest, batch_size, padding)
    finally:
        model.train(was_training)
    outputs, order = _gather(local[: len(indices)], indices)
    assert order == list(range(len(dataset))), "evaluation lost examples"
    if mode == "classify":
        predictions = [min(max(o, 0.0), 5.0) if task.is_regression else o for o in outputs]
    else:
        predictions = [task.parse_prediction(o) for o in outputs]
    groups = dataset["group"] if "group" in dataset.column_names else None
    metrics: dict[str, Any] = compute_metrics(task, predictions, dataset["label"], groups)
    metrics.update(prediction_counts(task, predictions))
    metrics["padding_fraction"] = padding.fraction  # of this process's batches
    metrics["tokens"] = padding.real
    metrics["eval_time_s"] = time.perf_counter() - start
    metrics["num_examples"] = len(dataset)
    records = []
    for i, (target, output, prediction) in enumerate(zip(dataset["target"], outputs, predictions, strict=True)):
        record: dict[str, Any] = {"id": i, "gold": target, "pred": _prediction_word(task, prediction)}
        if prediction is None:
            record["raw"] = output
        records.append(record)
    return EvalResult(metrics, records)
