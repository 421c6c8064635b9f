"""The per-example predictions of a run in the results folder, stored compactly: one gzip-compressed JSON-lines file
per run, ``predictions.jsonl.gz``, one line per evaluation, ``{"step": 100, "records": [...]}``, with the records
exactly as the harness wrote them to ``predictions/step-<step>.jsonl`` in its run folder (``id``, ``gold``, ``pred``
as label words, and the ``raw`` text of an invalid output).

The suite writes it when it copies a finished run (:func:`write_compact`). Readers (:func:`read_evaluations`) take
both that file and prediction files in the harness's layout (a results folder copied by an older suite), the latter
overriding the former step by step; ``python -m benchmarks.quality_suite compact`` converts such folders
(:func:`compact_folder`: idempotent, safe to run again on new folders).
"""

from __future__ import annotations

import functools
import gzip
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peft_superpos.atomic_files import atomic_write
from peft_superpos.data import get_task
from peft_superpos.harness.run_record import PREDICTIONS_DIR, read_jsonl

COMPACT_FILE = "predictions.jsonl.gz"

#: step -> the records of the evaluation at that step, in the harness's order.
Evaluations = dict[int, list[dict[str, Any]]]


def harness_files(folder: Path) -> dict[int, Path]:
    """step -> ``predictions/step-<step>.jsonl`` of ``folder`` (the harness's layout: one file per evaluation)."""
    paths = (folder / PREDICTIONS_DIR).glob("step-*.jsonl")
    return {int(path.stem.removeprefix("step-")): path for path in sorted(paths) if path.is_file()}


def compact_bytes(evaluations: Mapping[int, list[dict[str, Any]]]) -> bytes:
    """The compact file's content (steps in order; gzip without a time stamp, so equal input gives equal bytes)."""
    lines = (json.dumps({"step": step, "records": evaluations[step]}, separators=(",", ":")) for step in
             sorted(evaluations))  # fmt: skip
    return gzip.compress("".join(line + "\n" for line in lines).encode(), compresslevel=9, mtime=0)


def write_compact(path: Path, evaluations: Mapping[int, list[dict[str, Any]]], data: bytes | None = None) -> Path:
    """Write the compact file at ``path`` atomically (``data``: :func:`compact_bytes` of ``evaluations``)."""
    data = compact_bytes(evaluations) if data is None else data
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda temporary: temporary.write_bytes(data))
    return path


def read_compact(path: Path) -> Evaluations:
    """The evaluations of a compact file (none if it is missing)."""
    if not path.is_file():
        return {}
    lines = gzip.decompress(path.read_bytes()).decode().splitlines()
    return {int(value["step"]): value["records"] for value in map(json.loads, lines)}


def version(folder: Path) -> tuple[tuple[str, int, int], ...]:
    """What the evaluations of ``folder`` are read from, with modification times and sizes: a cache key."""
    paths = [folder / COMPACT_FILE, *harness_files(folder).values()]
    return tuple((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in paths if p.is_file())


def read_evaluations(folder: Path) -> Evaluations:
    """Every evaluation saved in a run's results folder: the compact file's, and those of prediction files in the
    harness's layout (which win for a step that both hold)."""
    return cached_evaluations(folder, version(folder))


@functools.cache
def cached_evaluations(folder: Path, key: tuple) -> Evaluations:
    """:func:`read_evaluations` for one :func:`version` of the folder (the suite refreshes the report after every
    run; only new files cost time)."""
    evaluations = read_compact(folder / COMPACT_FILE)
    evaluations.update({step: read_jsonl(path) for step, path in harness_files(folder).items()})
    return dict(sorted(evaluations.items()))


def compact_folder(folder: Path) -> Path | None:
    """Fold a run's prediction files in the harness's layout into its compact file (with any evaluations that file
    already holds), check it reads back equal, then delete them; returns the compact file, None when there was
    nothing to convert."""
    files = harness_files(folder)
    if not files:
        return None
    evaluations = read_evaluations(folder)
    path = write_compact(folder / COMPACT_FILE, evaluations)
    if read_compact(path) != evaluations:
        raise RuntimeError(f"{path} does not read back as the prediction files it was written from; nothing deleted")
    for file in files.values():
        file.unlink()
    if not any((folder / PREDICTIONS_DIR).iterdir()):
        (folder / PREDICTIONS_DIR).rmdir()
    return path


def compact_results(results_dir: Path) -> list[Path]:
    """:func:`compact_folder` for every run folder under ``results_dir`` with prediction files in the harness's
    layout; returns the compact files written."""
    folders = sorted({path.parent for path in results_dir.rglob(PREDICTIONS_DIR) if path.is_dir()})
    return [path for folder in folders if (path := compact_folder(folder)) is not None]


@dataclass(frozen=True)
class SavedPredictions:
    """One evaluation's per-example records, parsed: example ids, gold labels and predictions as label ids
    (STS-B: scores, the golds rounded to 0.2 as saved; ``None``: an invalid prediction)."""

    ids: tuple[int, ...]
    golds: tuple[int | float, ...]
    preds: tuple[int | float | None, ...]


def parse_records(records: Iterable[Mapping[str, Any]], task_name: str) -> SavedPredictions | None:
    """Records as the harness writes them (``id``, and ``gold`` and ``pred`` as label words), parsed; None if there
    are none or a gold label does not parse."""
    task, records = get_task(task_name), list(records)
    golds = [task.parse_prediction(str(record.get("gold"))) for record in records]
    if not records or any(g is None for g in golds):
        return None
    preds = tuple(task.parse_prediction(str(record.get("pred"))) for record in records)
    return SavedPredictions(tuple(int(r["id"]) for r in records), tuple(golds), preds)  # type: ignore[arg-type]


def predictions_at(folder: Path, step: int, task_name: str) -> SavedPredictions | None:
    """The parsed predictions of the evaluation at ``step`` in a run's results folder; None if it has none."""
    records = read_evaluations(folder).get(step)
    return None if records is None else parse_records(records, task_name)
