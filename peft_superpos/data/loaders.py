"""Load a task split as a ``datasets.Dataset`` of ``source`` / ``target`` / ``label`` (/ ``group``).

Data come from the official files when a data directory is given (argument, or the environment
variable ``PEFT_SUPERPOS_DATA_DIR``), laid out as ``<data_dir>/glue/<TASK>/{train,dev}.tsv`` and
``<data_dir>/superglue/<TASK>/{train,val}.jsonl`` (task folders named as in the official downloads:
CoLA, SST-2, MRPC, QQP, STS-B, MNLI, QNLI, RTE, BoolQ, CB, COPA, MultiRC, WiC). Otherwise they come
from the Hugging Face Hub through ``datasets.load_dataset`` (needs network access).

GLUE ``.tsv`` files are read line by line and split on tabs with no quote handling (like
``csv.QUOTE_NONE``), because SST-2, CoLA and MRPC contain unbalanced quotes. How a file's rows become examples
(its converter, and the columns of a file without a header row) is part of its task (:class:`.task.TaskFiles`).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .task import Row, Task, TaskFiles
from .tasks import get_task

if TYPE_CHECKING:
    import datasets

__all__ = ["DATA_DIR_ENV", "find_split_file", "load_task_split", "read_split_rows", "split_off_dev"]

#: Environment variable naming the default data directory.
DATA_DIR_ENV = "PEFT_SUPERPOS_DATA_DIR"


def _check_split(task: Task, split: str) -> None:
    if split not in task.splits:
        raise ValueError(f"unknown split {split!r} for task {task.name!r}; expected one of {task.splits}")


def _candidates(files: TaskFiles, split: str, data_dir: Path) -> list[Path]:
    name = files.splits[split]
    return [data_dir / files.benchmark_dir / files.task_dir / name, data_dir / files.task_dir / name]


def find_split_file(task: Task | str, split: str, data_dir: str | os.PathLike[str]) -> tuple[Path, str]:
    """Return ``(path, file_format)`` of the first existing official file for ``task`` / ``split``.

    Raises ``FileNotFoundError`` listing every path that was tried.
    """
    path, files = _find_split_file(get_task(task), split, data_dir)
    return path, files.file_format


def _find_split_file(task: Task, split: str, data_dir: str | os.PathLike[str]) -> tuple[Path, TaskFiles]:
    _check_split(task, split)
    tried: list[Path] = []
    for files in task.data_files:
        for path in _candidates(files, split, Path(data_dir)):
            if path.is_file():
                return path, files
            tried.append(path)
    listed = "\n  ".join(str(p) for p in tried)
    raise FileNotFoundError(f"no {task.display_name} {split} file found; expected one of:\n  {listed}")


def _tsv_records(path: Path, columns: tuple[str, ...] | None) -> Iterator[tuple[int, Row]]:
    """The rows of a ``.tsv`` file; ``columns`` None: the first row names them."""
    with path.open(encoding="utf-8-sig", newline="") as handle:
        for lineno, line in enumerate(handle, start=1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            fields = line.split("\t")
            if columns is None:
                columns = tuple(fields)
                continue
            if len(fields) != len(columns):
                raise ValueError(
                    f"{path}, line {lineno}: expected {len(columns)} tab-separated fields, got {len(fields)}"
                )
            yield lineno, dict(zip(columns, fields, strict=True))


def _jsonl_records(path: Path) -> Iterator[tuple[int, Row]]:
    with path.open(encoding="utf-8-sig") as handle:
        for lineno, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}, line {lineno}: invalid JSON ({err})") from err
            if not isinstance(record, dict):
                raise ValueError(f"{path}, line {lineno}: expected a JSON object")
            yield lineno, record


def read_split_rows(task: Task | str, split: str, data_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read the official file of a split into rows in the ``datasets`` schema (not yet formatted).

    Raises ``ValueError`` naming the file and line number for a malformed row.
    """
    task = get_task(task)
    path, files = _find_split_file(task, split, data_dir)
    records = _tsv_records(path, files.columns) if files.file_format == "tsv" else _jsonl_records(path)
    rows: list[dict[str, Any]] = []
    for lineno, record in records:
        try:
            converted = list(files.convert(record))
        except (KeyError, TypeError, ValueError) as err:
            detail = f"missing field {err}" if isinstance(err, KeyError) else str(err)
            raise ValueError(f"{path}, line {lineno}: malformed {task.display_name} row: {detail}") from err
        for row in converted:
            row.setdefault("idx", len(rows))
            rows.append(row)
    return rows


def _load_from_hub(task: Task, split: str) -> Iterable[dict[str, Any]]:
    import datasets

    hub_split = task.hub_splits[split]
    try:
        try:
            return datasets.load_dataset(task.hub_path, task.hub_config, split=hub_split)
        except Exception:
            if task.benchmark != "super_glue":
                raise
            # The SuperGLUE repository has a loading script, which datasets>=4 refuses; use its
            # automatic parquet export instead.
            return datasets.load_dataset(
                task.hub_path, task.hub_config, split=hub_split, revision="refs/convert/parquet"
            )
    except Exception as err:  # network, missing repository, offline mode, ...
        raise RuntimeError(
            f"could not load {task.hub_path} ({task.hub_config}, {task.hub_splits[split]}) from the "
            f"Hugging Face Hub: {err}. Pass data_dir=... or set {DATA_DIR_ENV} to a folder with the "
            "official GLUE/SuperGLUE files (<data_dir>/glue/<TASK>/, <data_dir>/superglue/<TASK>/)."
        ) from err


def load_task_split(task: Task | str, split: str, data_dir: str | os.PathLike[str] | None = None) -> datasets.Dataset:
    """Load ``split`` ("train", "validation"; MNLI also "validation_(mis)matched") of ``task``.

    Uses the official files under ``data_dir`` (default: ``$PEFT_SUPERPOS_DATA_DIR``) when set,
    else the Hugging Face Hub. Columns: ``source``, ``target``, ``label`` (``group`` for MultiRC).
    """
    import datasets

    task = get_task(task)
    _check_split(task, split)
    if data_dir is None:
        data_dir = os.environ.get(DATA_DIR_ENV) or None
    rows = read_split_rows(task, split, data_dir) if data_dir is not None else _load_from_hub(task, split)
    examples = [task.format(row) for row in rows]
    columns = ["source", "target", "label"] + (["group"] if task.is_grouped else [])
    label_type = "float64" if task.is_regression else "int64"
    features = datasets.Features({c: datasets.Value(label_type if c == "label" else "string") for c in columns})
    return datasets.Dataset.from_dict({c: [ex[c] for ex in examples] for c in columns}, features=features)


def first_examples(dataset: datasets.Dataset, count: int) -> datasets.Dataset:
    """The first ``count`` examples of ``dataset``; with a ``group`` column (MultiRC: one row per answer
    option) it keeps whole groups, extending past ``count`` to the end of the last group it reaches, so exact
    match scores complete questions."""
    if count >= len(dataset):
        return dataset
    end = count
    if "group" in dataset.column_names:
        groups = dataset["group"]
        while end < len(groups) and groups[end] == groups[count - 1]:
            end += 1
    return dataset.select(range(end))


def split_off_dev(train: datasets.Dataset, size: int, seed: int) -> tuple[datasets.Dataset, datasets.Dataset]:
    """``(rest of train, dev)``: a development split of ``size`` examples drawn from ``train`` with ``seed``, for
    choosing settings without touching the validation examples that are reported. The two are disjoint; with a
    ``group`` column whole groups go to one side (the dev split then ends with the group that reaches ``size``).
    Rows keep their file order on both sides."""
    import numpy as np

    groups = train["group"] if "group" in train.column_names else list(range(len(train)))
    sizes = Counter(groups)  # insertion-ordered: each group once, in file order
    if size >= len(train):
        raise ValueError(f"a development split of {size} leaves nothing to train on ({len(train)} training examples)")
    order = list(sizes)
    picked: set = set()
    for index in np.random.default_rng(seed).permutation(len(order)):
        picked.add(order[index])
        size -= sizes[order[index]]
        if size <= 0:
            break
    in_dev = [group in picked for group in groups]
    rows = range(len(train))
    return train.select([i for i in rows if not in_dev[i]]), train.select([i for i in rows if in_dev[i]])
