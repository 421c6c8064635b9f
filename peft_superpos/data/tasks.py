"""The 13 GLUE / SuperGLUE tasks of the SuperPos-Prompt paper as text-to-text tasks.

Every task turns a row in the Hugging Face ``datasets`` schema of ``glue`` / ``super_glue`` (the
loaders convert the official ``.tsv`` / ``.jsonl`` files to that schema) into
``{"source": str, "target": str, "label": int | float}`` (plus ``"group"`` for MultiRC).

Templates and label words follow the T5 text-to-text convention used by the paper: the source starts
with the task prefix followed by ``field: text`` pairs (e.g. ``"rte sentence1: ... sentence2: ..."``)
and the target is a label word. Label indices follow the ``datasets`` label order, so rows read from
the official files and rows from the Hub get the same ids. Label words per task:

* CoLA ``unacceptable``/``acceptable``, SST-2 ``negative``/``positive``,
  MRPC ``not_equivalent``/``equivalent``, QQP ``not_duplicate``/``duplicate``,
  MNLI ``entailment``/``neutral``/``contradiction``, QNLI and RTE ``entailment``/``not_entailment``,
  CB ``entailment``/``contradiction``/``neutral``, BoolQ, WiC and MultiRC ``False``/``True``.
* COPA: both alternatives are in the source (``"copa choice1: ... choice2: ... premise: ...
  question: cause"``) and the target is the name of the correct one, ``choice1`` or ``choice2``.
* STS-B: regression; the target is the score rounded to the nearest 0.2 and written with one decimal
  (``"3.4"``), and the candidate list for rank classification is ``STSB_TARGETS`` (``"0.0"`` ..
  ``"5.0"``, 26 strings).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

__all__ = [
    "STSB_TARGETS",
    "TASKS",
    "TASK_NAMES",
    "Task",
    "TaskFiles",
    "get_task",
]

#: The 26 STS-B targets ``"0.0", "0.2", ..., "5.0"`` used for rank classification.
STSB_TARGETS: tuple[str, ...] = tuple(f"{i / 5:.1f}" for i in range(26))

_FALSE_TRUE = ("False", "True")
_TRAIN_VALIDATION = ("train", "validation")


@dataclass(frozen=True)
class TaskFiles:
    """Where the official files of a task live below a data directory.

    The files of split ``s`` are ``<data_dir>/<benchmark_dir>/<task_dir>/<splits[s]>``; the loaders
    also accept ``<data_dir>/<task_dir>/<splits[s]>`` (the layout of ``download_glue_data.py``).
    """

    benchmark_dir: str
    task_dir: str
    splits: Mapping[str, str] = field(compare=False)

    @property
    def file_format(self) -> str:
        """``"tsv"`` or ``"jsonl"``, taken from the file names."""
        return "jsonl" if next(iter(self.splits.values())).endswith(".jsonl") else "tsv"


@dataclass(frozen=True)
class Task:
    """One text-to-text task: its data sources, template, label words and metrics."""

    name: str
    benchmark: str
    hub_config: str
    label_words: tuple[str, ...] | None
    metrics: tuple[str, ...]
    template: Callable[[Mapping[str, Any]], str] = field(repr=False, compare=False)
    data_files: tuple[TaskFiles, ...] = field(repr=False, compare=False)
    hub_splits: Mapping[str, str] = field(repr=False, compare=False)
    display_name: str = ""

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
        if self.name == "multirc":
            idx = row["idx"]
            out["group"] = f"{idx['paragraph']}-{idx['question']}"
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


def _clean(text: Any) -> str:
    return " ".join(str(text).split())


def _template(prefix: str, *fields: tuple[str, str]) -> Callable[[Mapping[str, Any]], str]:
    """``prefix key1: row[col1] key2: row[col2] ...`` for ``(key, col)`` pairs."""

    def render(row: Mapping[str, Any]) -> str:
        return " ".join([prefix, *(f"{key}: {_clean(row[col])}" for key, col in fields)])

    return render


_MARKUP = re.compile(r"<br>|</?b>")


def _multirc_template(row: Mapping[str, Any]) -> str:
    paragraph = _clean(_MARKUP.sub(" ", str(row["paragraph"])))
    return f"multirc question: {_clean(row['question'])} answer: {_clean(row['answer'])} paragraph: {paragraph}"


def _glue(task_dir: str, *, validation: str = "dev.tsv") -> TaskFiles:
    splits = {"train": "train.tsv", "validation": validation}
    return TaskFiles("glue", task_dir, MappingProxyType(splits))


def _superglue(task_dir: str) -> TaskFiles:
    splits = {"train": "train.jsonl", "validation": "val.jsonl"}
    return TaskFiles("superglue", task_dir, MappingProxyType(splits))


def _hub_splits(**extra: str) -> Mapping[str, str]:
    return MappingProxyType({"train": "train", "validation": "validation", **extra})


def _build() -> dict[str, Task]:
    mnli_files = TaskFiles(
        "glue",
        "MNLI",
        MappingProxyType(
            {
                "train": "train.tsv",
                "validation": "dev_matched.tsv",
                "validation_matched": "dev_matched.tsv",
                "validation_mismatched": "dev_mismatched.tsv",
            }
        ),
    )
    mnli_splits = MappingProxyType(
        {
            "train": "train",
            "validation": "validation_matched",
            "validation_matched": "validation_matched",
            "validation_mismatched": "validation_mismatched",
        }
    )
    entail = ("entailment", "not_entailment")
    tasks = [
        Task(
            "qqp",
            "glue",
            "qqp",
            ("not_duplicate", "duplicate"),
            ("f1", "accuracy"),
            _template("qqp", ("question1", "question1"), ("question2", "question2")),
            (_glue("QQP"),),
            _hub_splits(),
            "QQP",
        ),
        Task(
            "qnli",
            "glue",
            "qnli",
            entail,
            ("accuracy",),
            _template("qnli", ("question", "question"), ("sentence", "sentence")),
            (_glue("QNLI"),),
            _hub_splits(),
            "QNLI",
        ),
        Task(
            "mnli",
            "glue",
            "mnli",
            ("entailment", "neutral", "contradiction"),
            ("accuracy",),
            _template("mnli", ("hypothesis", "hypothesis"), ("premise", "premise")),
            (mnli_files,),
            mnli_splits,
            "MNLI",
        ),
        Task(
            "sst2",
            "glue",
            "sst2",
            ("negative", "positive"),
            ("accuracy",),
            _template("sst2", ("sentence", "sentence")),
            (_glue("SST-2"),),
            _hub_splits(),
            "SST-2",
        ),
        Task(
            "stsb",
            "glue",
            "stsb",
            None,
            ("pearson", "spearman"),
            _template("stsb", ("sentence1", "sentence1"), ("sentence2", "sentence2")),
            (_glue("STS-B"),),
            _hub_splits(),
            "STS-B",
        ),
        Task(
            "mrpc",
            "glue",
            "mrpc",
            ("not_equivalent", "equivalent"),
            ("f1", "accuracy"),
            _template("mrpc", ("sentence1", "sentence1"), ("sentence2", "sentence2")),
            (_glue("MRPC"),),
            _hub_splits(),
            "MRPC",
        ),
        Task(
            "cola",
            "glue",
            "cola",
            ("unacceptable", "acceptable"),
            ("mcc",),
            _template("cola", ("sentence", "sentence")),
            (_glue("CoLA"),),
            _hub_splits(),
            "CoLA",
        ),
        Task(
            "multirc",
            "super_glue",
            "multirc",
            _FALSE_TRUE,
            ("f1a", "em"),
            _multirc_template,
            (_superglue("MultiRC"),),
            _hub_splits(),
            "MultiRC",
        ),
        Task(
            "rte",
            "super_glue",
            "rte",
            entail,
            ("accuracy",),
            _template("rte", ("sentence1", "premise"), ("sentence2", "hypothesis")),
            (_superglue("RTE"), _glue("RTE")),
            _hub_splits(),
            "RTE",
        ),
        Task(
            "cb",
            "super_glue",
            "cb",
            ("entailment", "contradiction", "neutral"),
            ("macro_f1", "accuracy"),
            _template("cb", ("hypothesis", "hypothesis"), ("premise", "premise")),
            (_superglue("CB"),),
            _hub_splits(),
            "CB",
        ),
        Task(
            "copa",
            "super_glue",
            "copa",
            ("choice1", "choice2"),
            ("accuracy",),
            _template(
                "copa",
                ("choice1", "choice1"),
                ("choice2", "choice2"),
                ("premise", "premise"),
                ("question", "question"),
            ),
            (_superglue("COPA"),),
            _hub_splits(),
            "COPA",
        ),
        Task(
            "wic",
            "super_glue",
            "wic",
            _FALSE_TRUE,
            ("accuracy",),
            _template("wic", ("sentence1", "sentence1"), ("sentence2", "sentence2"), ("word", "word")),
            (_superglue("WiC"),),
            _hub_splits(),
            "WiC",
        ),
        Task(
            "boolq",
            "super_glue",
            "boolq",
            _FALSE_TRUE,
            ("accuracy",),
            _template("boolq", ("question", "question"), ("passage", "passage")),
            (_superglue("BoolQ"),),
            _hub_splits(),
            "BoolQ",
        ),
    ]
    return {task.name: task for task in tasks}


#: Read-only registry of all tasks, keyed by canonical lower-case name, in the paper's order.
TASKS: Mapping[str, Task] = MappingProxyType(_build())
#: Canonical task names in the paper's order.
TASK_NAMES: tuple[str, ...] = tuple(TASKS)


def _normalize(name: str) -> str:
    return re.sub(r"[-_\s]", "", name.lower())


def get_task(name: str | Task) -> Task:
    """Look up a task by name, ignoring case, ``-``, ``_`` and spaces ("SST-2" == "sst2")."""
    if isinstance(name, Task):
        return name
    task = TASKS.get(_normalize(name))
    if task is None:
        known = ", ".join(t.display_name for t in TASKS.values())
        raise ValueError(f"unknown task {name!r}; known tasks: {known}")
    return task
