"""The run record: every file a run writes into its folder, its name, how it is written and how it is read.

* ``metrics.jsonl``: one row per evaluation (:func:`append_row`, :func:`read_rows`);
* ``predictions/step-<step>.jsonl``: one line per evaluated example of the evaluation at ``step`` (``id``,
  ``gold``, ``pred``; ``invalid`` plus the ``raw`` text when the output is no label) (:func:`write_predictions`);
* ``final.json``: the summary of the run (:func:`final_record`, :func:`write_final`);
* ``floors.json``: the zero-shot floor, computed once per folder (:func:`read_floors`, :func:`write_floors`);
* ``run_config.json``: the settings of the run (:mod:`.run_folder` compares and writes it);
* ``learning_curve.png`` (:func:`plot_learning_curve`).

:class:`RunRecord` reads a finished or running folder; the benchmarks and the tests read runs through it.
Every file but ``metrics.jsonl`` is written with :func:`~peft_superpos.atomic_files.atomic_write` (the package's
one write-then-rename lives in :mod:`peft_superpos.atomic_files`).

``metrics.jsonl`` is append-only: each row is written with a single ``os.write`` on an ``O_APPEND`` descriptor
and fsync'ed, so a run killed at any moment leaves whole rows (at worst one torn last line, which the next
start cuts off). Rows are never rewritten.

Resume semantics: a restarted run continues from its last checkpoint (step ``k``). Rows logged earlier for
steps after ``k`` (an evaluation that finished before the kill but whose checkpoint was not yet written)
stay in the file; the rerun appends new rows for those steps. Every row carries ``session`` (0 for the first
start, +1 per restart) and readers take the **last row per step** (:func:`read_rows` with ``dedupe=True``);
``final.json`` lists the replaced rows under ``superseded_rows``. With the seeds fixed the rerun rows are
equal to the replaced ones up to float noise.

``train_loss`` is the mean loss of the steps since the previous row, across restarts too: checkpoints keep the
loss of the steps not yet logged (see :mod:`.task_trainer`). When a checkpoint lacks it, the first row after
resuming from it covers fewer steps: it is marked ``"train_loss_partial": true`` and never replaces a complete
row of the same step.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..atomic_files import atomic_write, atomic_write_text

__all__ = [
    "CURVE_FILE",
    "FINAL_FILE",
    "FLOORS_FILE",
    "METRICS_FILE",
    "PREDICTIONS_DIR",
    "RECORD_FILES",
    "RUN_CONFIG_FILE",
    "RunRecord",
    "append_row",
    "best_row",
    "final_record",
    "json_safe",
    "latest_rows",
    "plot_learning_curve",
    "predictions_path",
    "read_floors",
    "read_jsonl",
    "read_rows",
    "repair_metrics_file",
    "write_final",
    "write_floors",
    "write_predictions",
]

METRICS_FILE = "metrics.jsonl"
FINAL_FILE = "final.json"
FLOORS_FILE = "floors.json"
RUN_CONFIG_FILE = "run_config.json"
CURVE_FILE = "learning_curve.png"
PREDICTIONS_DIR = "predictions"
RECORD_FILES = (METRICS_FILE, FINAL_FILE, CURVE_FILE, FLOORS_FILE, RUN_CONFIG_FILE, PREDICTIONS_DIR)
"""Files and folders the harness writes besides ``checkpoint-<step>`` (what ``--overwrite-output-dir`` deletes)."""

Row = dict[str, Any]


def json_safe(value: Any) -> Any:
    """``value`` ready for strict JSON: NaN and infinities become null, tensors and numpy scalars plain numbers,
    tuples lists and sets sorted lists (recursively)."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, set):
        return sorted(value)
    if hasattr(value, "item"):
        return json_safe(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def append_row(path: str | os.PathLike, row: Row) -> None:
    """Append one JSON line atomically (single write on an O_APPEND descriptor, then fsync)."""
    data = (json.dumps(json_safe(row)) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        written = os.write(fd, data)
        if written != len(data):  # pragma: no cover - regular files take small writes whole
            raise OSError(f"short write to {path}")
        os.fsync(fd)
    finally:
        os.close(fd)


def repair_metrics_file(path: str | os.PathLike) -> bool:
    """Cut a torn last line (no newline, not JSON) left by a kill during a write. Returns True if it cut."""
    path = Path(path)
    if not path.is_file():
        return False
    data = path.read_bytes()
    if not data or data.endswith(b"\n"):
        return False
    cut = data.rfind(b"\n") + 1
    with open(path, "r+b") as handle:
        handle.truncate(cut)
    return True


def read_jsonl(path: str | os.PathLike) -> list[Row]:
    """The JSON lines of ``path`` ([] when it does not exist); a line that is not JSON (a torn last line) is
    skipped."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue  # a torn last line: not a logged row
    return rows


def read_rows(path: str | os.PathLike, dedupe: bool = True) -> list[Row]:
    """Rows of ``metrics.jsonl`` in step order; with ``dedupe`` the last row per step (see module doc)."""
    rows = read_jsonl(path)
    return latest_rows(rows)[0] if dedupe else rows


def latest_rows(rows: list[Row]) -> tuple[list[Row], list[Row]]:
    """``(rows, superseded)``: the last row per step in step order (a ``train_loss_partial`` row does not
    replace a complete one), and the other rows in file order."""
    by_step: dict[int, Row] = {}
    for row in rows:
        step = int(row["step"])
        kept = by_step.get(step)
        if kept is None or not row.get("train_loss_partial") or kept.get("train_loss_partial"):
            by_step[step] = row
    kept_ids = {id(row) for row in by_step.values()}
    return [by_step[s] for s in sorted(by_step)], [r for r in rows if id(r) not in kept_ids]


def best_row(rows: list[Row]) -> Row | None:
    """The row with the highest ``eval_score`` (the first of equals), None when no row has a score."""
    return max((r for r in rows if r.get("eval_score") is not None), key=lambda r: r["eval_score"], default=None)


def predictions_path(output_dir: str | os.PathLike, step: int) -> Path:
    """Where the per-example records of the evaluation at ``step`` go: ``predictions/step-<step>.jsonl``."""
    return Path(output_dir) / PREDICTIONS_DIR / f"step-{step:06d}.jsonl"


def write_predictions(output_dir: str | os.PathLike, step: int, records: list[Row]) -> Path:
    """Write one evaluation's per-example records to :func:`predictions_path` (atomically)."""
    path = predictions_path(output_dir, step)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records))
    return path


def read_floors(output_dir: str | os.PathLike) -> dict[str, Any]:
    """``floors.json`` (``zero_shot`` and the ``eval_mode`` it was computed in), {} when there is none."""
    path = Path(output_dir) / FLOORS_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def write_floors(output_dir: str | os.PathLike, zero_shot: float, eval_mode: str) -> None:
    atomic_write_text(Path(output_dir) / FLOORS_FILE, json.dumps({"zero_shot": zero_shot, "eval_mode": eval_mode}))


def final_record(
    *,
    run: dict[str, Any],
    model: dict[str, Any],
    progress: dict[str, Any],
    floors: dict[str, float | None],
    rows: list[Row],
    superseded: list[Row],
    data: dict[str, Any],
    throughput: dict[str, Any],
    environment: dict[str, Any],
    timings: dict[str, Any],
) -> dict[str, Any]:
    """The content of ``final.json``, in the file's order: what ran (``run``: task, method, config, eval_mode,
    hyperparameters, step_size), on what (``model``: peft_config, model_class, parameter counts), how far
    (``progress``: world_size, global_step, resumed_from, session), the ``floors``, the ``final`` and ``best``
    rows of ``rows`` (the last row per step) with the last train loss and the ``superseded_rows``, then ``data``,
    ``throughput``, ``environment`` and ``timings``."""
    return {
        **run,
        **model,
        **progress,
        "floors": floors,
        "final": rows[-1] if rows else None,
        "best": best_row(rows),
        "final_train_loss": rows[-1].get("train_loss") if rows else None,
        "superseded_rows": superseded,
        "data": data,
        "throughput": throughput,
        "environment": environment,
        "timings": timings,
    }


def write_final(output_dir: str | os.PathLike, final: dict[str, Any]) -> None:
    atomic_write_text(Path(output_dir) / FINAL_FILE, json.dumps(json_safe(final), indent=2))


@dataclass(frozen=True)
class RunRecord:
    """Reads what a run wrote into ``folder``."""

    folder: Path

    @property
    def final(self) -> dict[str, Any] | None:
        """``final.json``, None before the run finished."""
        path = self.folder / FINAL_FILE
        return json.loads(path.read_text()) if path.is_file() else None

    @property
    def run_config(self) -> dict[str, Any] | None:
        path = self.folder / RUN_CONFIG_FILE
        return json.loads(path.read_text()) if path.is_file() else None

    @property
    def floors(self) -> dict[str, Any]:
        return read_floors(self.folder)

    def rows(self, dedupe: bool = True) -> list[Row]:
        """The rows of ``metrics.jsonl`` (see :func:`read_rows`)."""
        return read_rows(self.folder / METRICS_FILE, dedupe=dedupe)

    def predictions(self, step: int) -> list[Row]:
        """The per-example records of the evaluation at ``step``."""
        return read_jsonl(predictions_path(self.folder, step))


def plot_learning_curve(rows: list[Row], path: str | os.PathLike, title: str = "") -> None:
    """Eval score and train loss against the step (matplotlib, Agg backend), written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    try:
        ax.plot(steps, [r.get("eval_score") for r in rows], "o-", color="tab:blue", label="eval score")
        shares = [r.get("eval_majority_pred_share") for r in rows]
        if any(s is not None for s in shares):  # 100 = every example gets the same prediction (a collapse)
            ax.plot(steps, shares, "^:", color="tab:gray", label="most frequent prediction, %")
            ax.legend(loc="lower left", fontsize="small")
        ax.set_xlabel("step")
        ax.set_ylabel("eval score", color="tab:blue")
        losses = [(r["step"], r["train_loss"]) for r in rows if r.get("train_loss") is not None]
        if losses:
            ax2 = ax.twinx()
            ax2.plot(*zip(*losses, strict=True), "s--", color="tab:red", label="train loss")
            ax2.set_ylabel("train loss", color="tab:red")
        ax.set_title(title)
        fig.tight_layout()
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100))
    finally:
        plt.close(fig)
