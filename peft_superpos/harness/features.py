"""Text-to-text features: tokenisation of ``source`` / ``target`` pairs and a dynamic-padding collator.

Decoder-only models see ``source + DECODER_SEPARATOR + " " + target + eos`` as one sequence; encoder-decoders
get ``source`` in the encoder and ``target + eos`` as labels. Only the target tokens (and eos) are trained on:
every other label is -100.

Decoder batches are **left-padded**, so every row's target ends at the last column and the logits needed for
the loss are the last ``K`` positions (``K`` = longest target + 1): the trainer passes those positions as
``logits_to_keep`` and the LM head runs on ``K`` positions instead of ``n_virtual + L``. Position ids are made
padding-aware by :func:`install_padding_aware_positions`, so left padding changes nothing in the model's output.
Encoder-decoder batches are right-padded (labels with -100).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

__all__ = [
    "ClassificationCollator",
    "ClassificationFeatures",
    "TextToTextCollator",
    "TextToTextFeatures",
    "install_padding_aware_positions",
    "keep_for_labels",
    "label_logits",
    "last_positions",
]

DECODER_SEPARATOR = "\nAnswer:"
"""Text between the source and the label word for decoder-only models."""

IGNORE_INDEX = -100


class TextToTextFeatures:
    """Turns ``(source, target)`` into token ids for one model kind, truncating only the source."""

    def __init__(self, tokenizer: Any, is_encoder_decoder: bool, max_length: int = 256) -> None:
        if tokenizer.eos_token_id is None:
            raise ValueError("The tokenizer has no eos token: the harness ends every target with eos.")
        self.tokenizer = tokenizer
        self.is_encoder_decoder = is_encoder_decoder
        self.max_length = max_length
        self.eos_id = int(tokenizer.eos_token_id)
        self.pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_id)
        self._separator = [] if is_encoder_decoder else self._ids(DECODER_SEPARATOR)
        self._target_cache: dict[str, list[int]] = {}

    def _ids(self, text: str, special: bool = False) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=special)["input_ids"])

    def target_ids(self, target: str) -> list[int]:
        """Label-word tokens followed by eos (decoders: tokenised as they follow the separator)."""
        cached = self._target_cache.get(target)
        if cached is not None:
            return cached
        if self.is_encoder_decoder:
            ids = self._ids(target)
        else:
            # Tokenise in context so BPE merges match the training sequence, then drop the separator part.
            joint = self._ids(DECODER_SEPARATOR + " " + target)
            sep = self._separator
            ids = joint[len(sep) :] if joint[: len(sep)] == sep else self._ids(" " + target)
        ids = [i for i in ids if i != self.eos_id] + [self.eos_id]
        self._target_cache[target] = ids
        return ids

    def truncated_source_ids(self, source: str, room: int | None = None) -> tuple[list[int], bool]:
        """``(ids, truncated)``: source tokens (with the tokenizer's special tokens; decoders: plus the
        separator) cut to ``room`` (default ``max_length``), and whether anything was cut."""
        room = self.max_length if room is None else room
        ids = self._ids(source, special=True)
        if self.is_encoder_decoder:
            if len(ids) <= room:
                return ids, False
            # keep a trailing special token (T5's </s>) after truncation
            return (ids[: room - 1] + ids[-1:] if ids[-1] == self.eos_id else ids[:room]), True
        if ids and ids[-1] == self.eos_id:  # tokenizers that append eos to every text
            ids = ids[:-1]
        keep = max(1, room - len(self._separator))
        return ids[:keep] + self._separator, len(ids) > keep

    def source_ids(self, source: str, room: int | None = None) -> list[int]:
        """Source tokens cut to ``room`` (see :meth:`truncated_source_ids`)."""
        return self.truncated_source_ids(source, room)[0]

    def encode(self, source: str, target: str) -> dict[str, Any]:
        """Training features: ``input_ids``, ``labels`` (-100 outside the target) and ``truncated`` (the
        source was cut to fit ``max_length``)."""
        target_ids = self.target_ids(target)
        if self.is_encoder_decoder:
            source_ids, truncated = self.truncated_source_ids(source)
            return {"input_ids": source_ids, "labels": target_ids, "truncated": truncated}
        source_ids, truncated = self.truncated_source_ids(source, room=max(1, self.max_length - len(target_ids)))
        return {
            "input_ids": source_ids + target_ids,
            "labels": [IGNORE_INDEX] * len(source_ids) + target_ids,
            "truncated": truncated,
        }

    def encode_dataset(self, dataset: Any) -> Any:
        """Map a ``datasets.Dataset`` of source/target rows to ``input_ids`` / ``labels`` / ``truncated``."""
        return dataset.map(
            lambda row: self.encode(row["source"], row["target"]),
            remove_columns=list(dataset.column_names),
            desc="Tokenizing",
            load_from_cache_file=False,
        )

    def collator(self) -> TextToTextCollator:
        return TextToTextCollator(self.pad_id, self.is_encoder_decoder)


@dataclass
class TextToTextCollator:
    """Pads a list of features per batch: decoders on the left, encoder-decoders on the right."""

    pad_id: int
    is_encoder_decoder: bool

    def _pad(self, rows: Sequence[Sequence[int]], value: int, left: bool) -> torch.Tensor:
        width = max(len(r) for r in rows)
        out = torch.full((len(rows), width), value, dtype=torch.long)
        for i, row in enumerate(rows):
            if row:
                if left:
                    out[i, width - len(row) :] = torch.as_tensor(row, dtype=torch.long)
                else:
                    out[i, : len(row)] = torch.as_tensor(row, dtype=torch.long)
        return out

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        left = not self.is_encoder_decoder
        input_ids = [list(f["input_ids"]) for f in features]
        batch = {
            "input_ids": self._pad(input_ids, self.pad_id, left),
            "attention_mask": self._pad([[1] * len(r) for r in input_ids], 0, left),
        }
        if "labels" in features[0]:
            labels = [list(f["labels"]) for f in features]
            batch["labels"] = self._pad(labels, IGNORE_INDEX, left)
        return batch


class ClassificationFeatures:
    """Source text -> token ids for a sequence-classification model (SEQ_CLS): ``labels`` is the class id
    (STS-B: the float score). Sources longer than ``max_length`` are cut, keeping the final special token."""

    is_encoder_decoder = False

    def __init__(self, tokenizer: Any, task: Any, max_length: int = 256) -> None:
        self.tokenizer = tokenizer
        self.task = task
        self.max_length = max_length
        self.pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)

    def truncated_source_ids(self, source: str, room: int | None = None) -> tuple[list[int], bool]:
        """``(ids, truncated)``: the tokenizer's ids of ``source`` (with its special tokens), cut to ``room``."""
        room = self.max_length if room is None else room
        ids = list(self.tokenizer(source)["input_ids"])
        if len(ids) <= room:
            return ids, False
        special = ids[-1] in self.tokenizer.all_special_ids
        return (ids[: room - 1] + ids[-1:] if special else ids[:room]), True

    def source_ids(self, source: str, room: int | None = None) -> list[int]:
        return self.truncated_source_ids(source, room)[0]

    def encode(self, source: str, label: int | float) -> dict[str, Any]:
        """Training features: ``input_ids``, ``labels`` (one value) and ``truncated``."""
        ids, truncated = self.truncated_source_ids(source)
        return {
            "input_ids": ids,
            "labels": float(label) if self.task.is_regression else int(label),
            "truncated": truncated,
        }

    def encode_dataset(self, dataset: Any) -> Any:
        """Map a ``datasets.Dataset`` of source/label rows to ``input_ids`` / ``labels`` / ``truncated``."""
        return dataset.map(
            lambda row: self.encode(row["source"], row["label"]),
            remove_columns=list(dataset.column_names),
            desc="Tokenizing",
            load_from_cache_file=False,
        )

    def collator(self) -> ClassificationCollator:
        return ClassificationCollator(self.pad_id, regression=self.task.is_regression)


@dataclass
class ClassificationCollator(TextToTextCollator):
    """Right-padded token ids with one label per row (a class id, or a float score for regression)."""

    is_encoder_decoder: bool = True  # right padding, like encoder inputs
    regression: bool = False

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        input_ids = [list(f["input_ids"]) for f in features]
        batch = {
            "input_ids": self._pad(input_ids, self.pad_id, left=False),
            "attention_mask": self._pad([[1] * len(r) for r in input_ids], 0, left=False),
        }
        if "labels" in features[0]:
            dtype = torch.float32 if self.regression else torch.long
            batch["labels"] = torch.tensor([f["labels"] for f in features], dtype=dtype)
        return batch


def keep_for_labels(labels: torch.Tensor) -> tuple[int, int]:
    """For left-padded decoder labels ``(B, L)``: ``(first, K)`` where ``first`` is the first column holding a
    label and ``K = L - first + 1`` the number of trailing positions whose logits the loss needs (the logit at
    column ``j`` predicts the token at ``j + 1``)."""
    has_label = (labels != IGNORE_INDEX).any(dim=0)
    if not bool(has_label.any()):
        raise ValueError("a batch without any label token")
    first = int(has_label.nonzero()[0])
    first = max(first, 1)
    return first, labels.shape[1] - first + 1


def last_positions(count: int, device: torch.device) -> torch.Tensor:
    """``logits_to_keep`` for the last ``count`` positions, as the index tensor ``-count..-1`` (shape
    ``(count,)``), not the int ``count``: the LM head then gets a contiguous ``(B, count, d)`` copy and runs as one
    matrix product. The int's strided slice makes torch broadcast the ``(V, d)`` weight into a batched product,
    which made Gemma 3's SST-2 training steps and generation 1.7-2.1x slower on an AMD EPYC
    (``benchmarks/model_cost.py``, phases "train, int keep" and "generate, int keep")."""
    return torch.arange(-count, 0, device=device)


def label_logits(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], is_encoder_decoder: bool
) -> tuple[Any, torch.Tensor, torch.Tensor]:
    """Run ``model`` on a batch with ``labels`` and return ``(outputs, logits, targets)``, where ``logits``
    ``(B, T, V)`` predict ``targets`` ``(B, T)`` (-100 where there is no label token).

    Encoder-decoders: the decoder logits and the labels as they are. Decoder-only (left-padded): the model runs
    the LM head on the last ``K`` positions only (``logits_to_keep``, see :func:`keep_for_labels`), and the
    logit at column ``j`` is paired with the label at ``j + 1``.
    """
    labels = batch["labels"]
    if is_encoder_decoder:
        outputs = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels, use_cache=False
        )
        return outputs, outputs.logits, labels
    first, keep = keep_for_labels(labels)
    outputs = model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        logits_to_keep=last_positions(keep, labels.device),
        use_cache=False,
    )
    return outputs, outputs.logits[:, -keep:-1], labels[:, first:]


def install_padding_aware_positions(model: torch.nn.Module) -> bool:
    """Give a decoder-only transformers model position ids counted over its attention mask when none are
    passed (a forward pre-hook), like ``generate`` does for plain models.

    Without it, left padding would shift every position (and the gap between a prepended soft prompt and the
    text would depend on the batch's padding): peft drops the position ids of prompt methods, so the hook sits
    on the base model and sees the prompt-extended mask. Returns False when the model takes no position ids.
    """
    if getattr(model.config, "is_encoder_decoder", False) or getattr(model, "_padding_aware_positions", False):
        return False
    if "position_ids" not in inspect.signature(model.forward).parameters:
        return False

    def hook(module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        if kwargs.get("position_ids") is not None or args:
            return None
        mask = kwargs.get("attention_mask")
        if not isinstance(mask, torch.Tensor) or mask.dim() != 2:
            return None
        tokens = kwargs.get("inputs_embeds")
        if tokens is None:
            tokens = kwargs.get("input_ids")
        if tokens is None:
            return None
        query_length = tokens.shape[1]
        if bool(mask.all()) and mask.shape[1] == query_length:
            return None  # no padding, no cache: the default positions are already right
        positions = (mask.long().cumsum(-1) - 1).clamp_min(0)[:, -query_length:]
        kwargs["position_ids"] = positions
        return args, kwargs

    model.register_forward_pre_hook(hook, with_kwargs=True)
    model._padding_aware_positions = True
    return True
