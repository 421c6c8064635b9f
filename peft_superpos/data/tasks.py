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

import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from types import MappingProxyType
from typing import Any

from .task import STSB_TARGETS, Row, Task, TaskFiles

__all__ = ["STSB_TARGETS", "TASKS", "TASK_NAMES", "Task", "TaskFiles", "get_task"]

_FALSE_TRUE = ("False", "True")
_NLI3 = ("entailment", "neutral", "contradiction")
_NLI2 = ("entailment", "not_entailment")
_CB = ("entailment", "contradiction", "neutral")
_COLA_COLUMNS = ("source", "label", "original_label", "sentence")


def _label_index(value: Any, names: tuple[str, ...]) -> int:
    if value not in names:
        raise ValueError(f"label {value!r} is not one of {names}")
    return names.index(value)


def _binary(value: Any) -> int:
    """0/1 from "0"/"1", 0/1 or false/true."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int) and value in (0, 1):
        return value
    if isinstance(value, str) and value.strip() in ("0", "1"):
        return int(value)
    raise ValueError(f"label {value!r} is not 0/1 or a boolean")


def _score(value: Any) -> float:
    score = float(value)
    if not 0.0 <= score <= 5.0:
        raise ValueError(f"score {value!r} is outside [0, 5]")
    return score


def _nli(premise: str, hypothesis: str, label: int) -> Row:
    return {"premise": premise, "hypothesis": hypothesis, "label": label}


def _superglue_nli(labels: tuple[str, ...]) -> Callable[[Row], Row]:
    """The converter of a SuperGLUE premise/hypothesis file with label names ``labels``."""
    return lambda r: _nli(r["premise"], r["hypothesis"], _label_index(r["label"], labels))


def _multirc_rows(raw: Row) -> Iterator[Row]:
    """One row per answer option of every question of a passage."""
    passage = raw["passage"]
    for question in passage["questions"]:
        for answer in question["answers"]:
            yield {
                "paragraph": passage["text"],
                "question": question["question"],
                "answer": answer["text"],
                "idx": {"paragraph": raw["idx"], "question": question["idx"], "answer": answer["idx"]},
                "label": _binary(answer["label"]),
            }


def _multirc_question(row: Mapping[str, Any]) -> str:
    idx = row["idx"]
    return f"{idx['paragraph']}-{idx['question']}"


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


def _one(convert: Callable[[Row], Row]) -> Callable[[Row], list[Row]]:
    """A converter of an official file whose rows are one example each."""
    return lambda row: [convert(row)]


def _glue(task_dir: str, convert: Callable[[Row], Row], validation: str = "dev.tsv", **extra: Any) -> TaskFiles:
    splits = {"train": "train.tsv", "validation": validation}
    return TaskFiles("glue", task_dir, MappingProxyType(splits), convert=_one(convert), **extra)


def _superglue(
    task_dir: str, convert: Callable[[Row], Row] | None = None, *, rows: Callable[[Row], Iterable[Row]] | None = None
) -> TaskFiles:
    """The SuperGLUE files of a task whose rows ``convert`` one to one, or each to several ``rows``."""
    splits = {"train": "train.jsonl", "validation": "val.jsonl"}
    return TaskFiles("superglue", task_dir, MappingProxyType(splits), convert=rows or _one(convert))


def _hub_splits(**extra: str) -> Mapping[str, str]:
    return MappingProxyType({"train": "train", "validation": "validation", **extra})


def _sentence(row: Row) -> Row:
    return {"sentence": row["sentence"], "label": _binary(row["label"])}


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
        convert=_one(lambda r: _nli(r["sentence1"], r["sentence2"], _label_index(r["gold_label"], _NLI3))),
    )
    mnli_splits = _hub_splits(
        validation="validation_matched",
        validation_matched="validation_matched",
        validation_mismatched="validation_mismatched",
    )
    glue, super_glue, hub = {"benchmark": "glue"}, {"benchmark": "super_glue"}, _hub_splits()
    tasks = [
        Task(
            name="qqp", **glue, hub_config="qqp", display_name="QQP", hub_splits=hub,
            label_words=("not_duplicate", "duplicate"), metrics=("f1", "accuracy"),
            template=_template("qqp", ("question1", "question1"), ("question2", "question2")),
            data_files=(_glue("QQP", lambda r: {"question1": r["question1"], "question2": r["question2"],
                                                "label": _binary(r["is_duplicate"])}),),
        ),
        Task(
            name="qnli", **glue, hub_config="qnli", display_name="QNLI", hub_splits=hub,
            label_words=_NLI2, metrics=("accuracy",),
            template=_template("qnli", ("question", "question"), ("sentence", "sentence")),
            data_files=(_glue("QNLI", lambda r: {"question": r["question"], "sentence": r["sentence"],
                                                 "label": _label_index(r["label"], _NLI2)}),),
        ),
        Task(
            name="mnli", **glue, hub_config="mnli", display_name="MNLI", hub_splits=mnli_splits,
            label_words=_NLI3, metrics=("accuracy",),
            template=_template("mnli", ("hypothesis", "hypothesis"), ("premise", "premise")),
            data_files=(mnli_files,),
        ),
        Task(
            name="sst2", **glue, hub_config="sst2", display_name="SST-2", hub_splits=hub,
            label_words=("negative", "positive"), metrics=("accuracy",),
            template=_template("sst2", ("sentence", "sentence")),
            data_files=(_glue("SST-2", _sentence),),
        ),
        Task(
            name="stsb", **glue, hub_config="stsb", display_name="STS-B", hub_splits=hub,
            label_words=None, metrics=("pearson", "spearman"),
            template=_template("stsb", ("sentence1", "sentence1"), ("sentence2", "sentence2")),
            data_files=(_glue("STS-B", lambda r: {"sentence1": r["sentence1"], "sentence2": r["sentence2"],
                                                  "label": _score(r["score"])}),),
        ),
        Task(
            name="mrpc", **glue, hub_config="mrpc", display_name="MRPC", hub_splits=hub,
            label_words=("not_equivalent", "equivalent"), metrics=("f1", "accuracy"),
            template=_template("mrpc", ("sentence1", "sentence1"), ("sentence2", "sentence2")),
            data_files=(_glue("MRPC", lambda r: {"sentence1": r["#1 String"], "sentence2": r["#2 String"],
                                                 "label": _binary(r["Quality"])}),),
        ),
        Task(
            name="cola", **glue, hub_config="cola", display_name="CoLA", hub_splits=hub,
            label_words=("unacceptable", "acceptable"), metrics=("mcc",),
            template=_template("cola", ("sentence", "sentence")),
            data_files=(_glue("CoLA", _sentence, columns=_COLA_COLUMNS),),  # CoLA's files have no header row
        ),
        Task(
            name="multirc", **super_glue, hub_config="multirc", display_name="MultiRC", hub_splits=hub,
            label_words=_FALSE_TRUE, metrics=("f1a", "em"),
            template=_multirc_template,
            data_files=(_superglue("MultiRC", rows=_multirc_rows),),  # one example per answer option
            group_of=_multirc_question,  # exact match scores whole questions
        ),
        Task(
            name="rte", **super_glue, hub_config="rte", display_name="RTE", hub_splits=hub,
            label_words=_NLI2, metrics=("accuracy",),
            template=_template("rte", ("sentence1", "premise"), ("sentence2", "hypothesis")),
            data_files=(
                _superglue("RTE", _superglue_nli(_NLI2)),
                _glue("RTE", lambda r: _nli(r["sentence1"], r["sentence2"], _label_index(r["label"], _NLI2))),
            ),
        ),
        Task(
            name="cb", **super_glue, hub_config="cb", display_name="CB", hub_splits=hub,
            label_words=_CB, metrics=("macro_f1", "accuracy"),
            template=_template("cb", ("hypothesis", "hypothesis"), ("premise", "premise")),
            data_files=(_superglue("CB", _superglue_nli(_CB)),),
        ),
        Task(
            name="copa", **super_glue, hub_config="copa", display_name="COPA", hub_splits=hub,
            label_words=("choice1", "choice2"), metrics=("accuracy",),
            template=_template("copa", ("choice1", "choice1"), ("choice2", "choice2"), ("premise", "premise"),
                               ("question", "question")),
            data_files=(_superglue("COPA", lambda r: {"premise": r["premise"], "choice1": r["choice1"],
                                                      "choice2": r["choice2"], "question": r["question"],
                                                      "label": _binary(r["label"])}),),
        ),
        Task(
            name="wic", **super_glue, hub_config="wic", display_name="WiC", hub_splits=hub,
            label_words=_FALSE_TRUE, metrics=("accuracy",),
            template=_template("wic", ("sentence1", "sentence1"), ("sentence2", "sentence2"), ("word", "word")),
            data_files=(_superglue("WiC", lambda r: {"word": r["word"], "sentence1": r["sentence1"],
                                                     "sentence2": r["sentence2"], "label": _binary(r["label"])}),),
        ),
        Task(
            name="boolq", **super_glue, hub_config="boolq", display_name="BoolQ", hub_splits=hub,
            label_words=_FALSE_TRUE, metrics=("accuracy",),
            template=_template("boolq", ("question", "question"), ("passage", "passage")),
            data_files=(_superglue("BoolQ", lambda r: {"question": r["question"], "passage": r["passage"],
                                                       "label": _binary(r["label"])}),),
        ),
    ]  # fmt: skip
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
