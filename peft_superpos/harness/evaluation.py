"""Evaluation of a text-to-text classifier: greedy generation (the paper's protocol) or rank classification.

* ``generate``: greedy decoding of at most (longest label word + 1) tokens, parsed with
  ``task.parse_prediction``; text that is no label word is invalid, counts as wrong and is reported as
  ``invalid_rate``.
* ``rank``: every string of ``task.choices`` (plus eos) is scored by the sum of its token log-likelihoods
  given the source; the best one is the prediction, so there are no invalid predictions.

Both return ``compute_metrics`` of the task (``score`` = mean of the task's metrics). Under ``torch.distributed``
each process evaluates every ``world_size``-th example and the predictions are gathered, so every process
returns the same metrics.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch

from ..data import compute_metrics
from .features import IGNORE_INDEX, TextToTextCollator, TextToTextEncoder, keep_for_labels

__all__ = ["EVAL_MODES", "evaluate", "rank_predictions", "generate_predictions", "sequence_logprobs"]

EVAL_MODES = ("generate", "rank")


def _batches(items: Sequence[Any], size: int):
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def sequence_logprobs(model: torch.nn.Module, batch: dict[str, torch.Tensor], is_encoder_decoder: bool) -> torch.Tensor:
    """Summed log-likelihood of the label tokens of every row ``(B,)`` (decoders: only the last K logits)."""
    labels = batch["labels"]
    if is_encoder_decoder:
        logits = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels, use_cache=False
        ).logits
        targets = labels
    else:
        first, keep = keep_for_labels(labels)
        logits = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], logits_to_keep=keep, use_cache=False
        ).logits[:, -keep:-1]
        targets = labels[:, first:]
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    mask = targets != IGNORE_INDEX
    picked = logprobs.gather(-1, targets.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    return (picked * mask).sum(-1)


@torch.no_grad()
def rank_predictions(
    model: torch.nn.Module, encoder: TextToTextEncoder, sources: Sequence[str], choices: Sequence[str], batch_size: int
) -> list[int]:
    """Index of the best-scoring choice for every source (each (source, choice) pair is one row)."""
    collator = TextToTextCollator(encoder.pad_id, encoder.is_encoder_decoder)
    pairs = [(i, c) for i in range(len(sources)) for c in range(len(choices))]
    scores = torch.empty(len(sources), len(choices))
    device = _device(model)
    for chunk in _batches(pairs, batch_size):
        features = [encoder.encode(sources[i], choices[c]) for i, c in chunk]
        batch = {k: v.to(device) for k, v in collator(features).items()}
        values = sequence_logprobs(model, batch, encoder.is_encoder_decoder).cpu()
        for (i, c), value in zip(chunk, values, strict=True):
            scores[i, c] = value
    return scores.argmax(dim=1).tolist()


@torch.no_grad()
def generate_predictions(
    model: torch.nn.Module, encoder: TextToTextEncoder, sources: Sequence[str], max_new_tokens: int, batch_size: int
) -> list[str]:
    """Greedy generations (decoded, special tokens removed) for every source."""
    collator = TextToTextCollator(encoder.pad_id, encoder.is_encoder_decoder)
    tokenizer = encoder.tokenizer
    device = _device(model)
    texts: list[str] = []
    for chunk in _batches(list(sources), batch_size):
        batch = collator([{"input_ids": encoder.source_ids(s)} for s in chunk])
        batch = {k: v.to(device) for k, v in batch.items()}
        output = model.generate(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            pad_token_id=encoder.pad_id,
            eos_token_id=encoder.eos_id,
        )
        if not encoder.is_encoder_decoder and output.shape[1] >= batch["input_ids"].shape[1]:
            if torch.equal(output[:, : batch["input_ids"].shape[1]], batch["input_ids"]):
                output = output[:, batch["input_ids"].shape[1] :]
        texts.extend(tokenizer.batch_decode(output, skip_special_tokens=True))
    return texts


def _gather(values: list[Any], indices: list[int]) -> tuple[list[Any], list[int]]:
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return values, indices
    world = torch.distributed.get_world_size()
    gathered: list[Any] = [None] * world
    torch.distributed.all_gather_object(gathered, (values, indices))
    merged = sorted(
        (i, v) for part_values, part_indices in gathered for v, i in zip(part_values, part_indices, strict=True)
    )
    return [v for _, v in merged], [i for i, _ in merged]


def evaluate(
    model: torch.nn.Module,
    encoder: TextToTextEncoder,
    task: Any,
    dataset: Any,
    mode: str = "generate",
    batch_size: int = 16,
) -> dict[str, float]:
    """Metrics of ``model`` on ``dataset`` (columns source/target/label(/group)); the model is left in eval
    mode only for the duration of the call."""
    if mode not in EVAL_MODES:
        raise ValueError(f"unknown eval mode {mode!r}; expected one of {EVAL_MODES}")
    rank, world = 0, 1
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    indices = list(range(rank, len(dataset), world))
    sources = [dataset[i]["source"] for i in indices]
    was_training = model.training
    model.eval()
    start = time.perf_counter()
    try:
        if mode == "rank":
            choice_ids = rank_predictions(model, encoder, sources, task.choices, batch_size)
            local: list[Any] = [task.choices[c] for c in choice_ids]
        else:
            longest = max(len(encoder.target_ids(c)) for c in task.choices)
            local = generate_predictions(model, encoder, sources, longest, batch_size)
    finally:
        model.train(was_training)
    texts, order = _gather(local, indices)
    assert order == list(range(len(dataset))), "evaluation lost examples"
    predictions = [task.parse_prediction(t) for t in texts]
    groups = dataset["group"] if "group" in dataset.column_names else None
    metrics = compute_metrics(task, predictions, dataset["label"], groups)
    metrics["eval_time_s"] = time.perf_counter() - start
    metrics["num_examples"] = len(dataset)
    return metrics
