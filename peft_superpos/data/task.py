"""A task of the SuperPos-Prompt paper as a text-to-text task (:class:`Task`) and where its official files live
(:class:`TaskFiles`); the 13 tasks themselves are in :mod:`.tasks`."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["STSB_TARGETS", "Row", "Task", "TaskFiles"]

#: The 26 STS-B targets ``"0.0", "0.2", ..., "5.0"`` used for rank classification.
STSB_TARGETS: tuple[str, ...] = tuple(f"{i / 5:.1f}" for i in range(26))

Row = dict[str, Any]


@dataclass(frozen=True)
class TaskFiles:
    """Where the official files of a task live below a data directory.

    The files of split ``s`` are ``<data_dir>/<benchmark_dir>/<task_dir>/<splits[s]>``; the loaders
    also accept ``<data_dir>/<task_dir>/<splits[s]>`` (the layout of ``download_glue_data.py``).
    """

    benchmark_dir: str
    task_dir: str
    splits: Mapping[str, str] = field(compare=False)
    convert: Callable[[Row], Iterable[Row]] = field(repr=False, compare=False)
    """An official row -> rows in the ``datasets`` schema (MultiRC: one per answer option)."""
    columns: tuple[str, ...] | None = None
    """The column names of a ``.tsv`` file without a header row (CoLA); None: the first row names them."""

    @property
    def file_format(self) -> str:
        """``"tsv"`` or ``"jsonl"``, taken from the file names."""
        return "jsonl" if next(iter(self.splits.values())).endswith(".jsonl") else "tsv"


@dataclass(frozen=True, kw_only=True)
class Task:
    """One text-to-text task: its data sources, template, label words and metrics, and what makes it special:
    ``group_of`` for a task whose examples come in groups scored together (MultiRC: the answer options of one
    question), the converters and header-less columns of its files (:class:`TaskFiles`)."""

    name: str
    benchmark: str
    hub_config: str
    label_words: tuple[str, ...] | None
    metrics: tuple[str, ...]
    template: Callable[[Mapping[str, Any]], str] = field(repr=False, compare=False)
    data_files: tuple[TaskFiles, ...] = field(repr=False, compare=False)
    hub_splits: Mapping[str, str] = field(repr=False, compare=False)
    display_name: str = ""
    group_of: Callable[[Mapping[str, Any]], str] | None = field(default=None, repr=False, compare=False)
    """The group of a row (MultiRC: its question), kept as the ``group`` column; None: no groups."""

    @property
    def is_grouped(self) -> bool:
        """Whether examples come in groups (a ``group`` column), scored and cut together."""
        return self.group_of is not None

    @property
    def files(self) -> Mapping[str, str]:
        """File name per split of the preferred source (e.g. ``{"train": "train.tsv", ...}``)."""
        return self.data_files[0].splits

    @property
    def splits(self) -> tuple[str, ...]:
        """Supported split names; ``"validation"`` is the dev set (MNLI: matched)."""
        return tuple(self.hub_splits)

    @property
    def hub_path(self) -> str:
        """Dataset repository on the Hugging Face Hub."""
        return "nyu-mll/glue" if self.benchmark == "glue" else "aps/super_glue"

    @property
    def is_regression(self) -> bool:
        """True for STS-B, whose label is a float score in [0, 5]."""
        return self.label_words is None

    @property
    def choices(self) -> tuple[str, ...]:
        """Target strings for rank classification: the label words, or ``STSB_TARGETS``."""
        return STSB_TARGETS if self.label_words is None else self.label_words

    def target_for(self, label: int | float) -> str:
        """Target text of a gold label.

        STS-B: the score rounded to the nearest 0.2 (ties to even, like ``np.round`` in T5).
        """
        if self.label_words is None:
            return f"{round(float(label) * 5) / 5:.1f}"
        return self.label_words[int(label)]

    def format(self, row: Mapping[str, Any]) -> dict[str, Any]:
        """Map a row in the ``datasets`` schema to ``{"source", "target", "label"(, "group")}``."""
        label: int | float = float(row["label"]) if self.is_regression else int(row["label"])
        out: dict[str, Any] = {
            "source": self.template(row),
            "target": self.target_for(label),
            "label": label,
        }
        if self.group_of is not None:
            out["group"] = self.group_of(row)
        return out

    def parse_prediction(self, text: str) -> int | float | None:
        """Map generated text to a label id (STS-B: a float clipped to [0, 5]); None if invalid.

        Classification: the stripped text must equal a label word, ignoring case.
        """
        text = text.strip()
        if self.label_words is None:
            try:
                value = float(text)
            except ValueError:
                return None
            if not math.isfinite(value):
                return None
            return min(max(value, 0.0), 5.0)
        lowered = text.lower()
        for index, word in enumerate(self.label_words):
            if word.lower() == lowered:
                return index
        return None
