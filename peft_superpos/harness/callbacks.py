"""Run records: ``metrics.jsonl`` (one row per evaluation), ``predictions/step-<step>.jsonl`` (one line per
evaluated example: ``id``, ``gold``, ``pred`` — ``invalid`` plus the ``raw`` text when the output is no label),
``final.json`` and ``learning_curve.png``.

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
loss of the steps not yet logged (see :mod:`.trainer`). A checkpoint written before that existed does not, so
the first row after resuming from it covers fewer steps: it is marked ``"train_loss_partial": true`` and never
replaces a complete row of the same step.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

__all__ = [
    "METRICS_FILE",
    "FINAL_FILE",
    "CURVE_FILE",
    "PREDICTIONS_DIR",
    "MetricsRecorder",
    "append_row",
    "atomic_write",
    "atomic_write_text",
    "json_safe",
    "latest_rows",
    "plot_learning_curve",
    "predictions_path",
    "read_rows",
    "repair_metrics_file",
    "write_predictions",
]

METRICS_FILE = "metrics.jsonl"
FINAL_FILE = "final.json"
CURVE_FILE = "learning_curve.png"
PREDICTIONS_DIR = "predictions"
PARTIAL_LOSS_KEY = "loss_partial"
"""Key the trainer adds to a log whose ``loss`` covers fewer steps than the logging interval."""


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


def append_row(path: str | os.PathLike, row: dict[str, Any]) -> None:
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


def read_rows(path: str | os.PathLike, dedupe: bool = True) -> list[dict[str, Any]]:
    """Rows of ``metrics.jsonl`` in step order; with ``dedupe`` the last row per step (see module doc)."""
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
    return latest_rows(rows)[0] if dedupe else rows


def latest_rows(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(rows, superseded)``: the last row per step in step order (a ``train_loss_partial`` row does not
    replace a complete one), and the other rows in file order."""
    by_step: dict[int, dict[str, Any]] = {}
    for row in rows:
        step = int(row["step"])
        kept = by_step.get(step)
        if kept is None or not row.get("train_loss_partial") or kept.get("train_loss_partial"):
            by_step[step] = row
    kept_ids = {id(row) for row in by_step.values()}
    return [by_step[s] for s in sorted(by_step)], [r for r in rows if id(r) not in kept_ids]


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """Write ``path`` through ``write(temporary path)`` and a rename, so it is never seen half-written."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


def predictions_path(output_dir: str | os.PathLike, step: int) -> Path:
    """Where the per-example records of the evaluation at ``step`` go: ``predictions/step-<step>.jsonl``."""
    return Path(output_dir) / PREDICTIONS_DIR / f"step-{step:06d}.jsonl"


def write_predictions(output_dir: str | os.PathLike, step: int, records: list[dict[str, Any]]) -> Path:
    """Write one evaluation's per-example records to :func:`predictions_path` (atomically)."""
    path = predictions_path(output_dir, step)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records))
    return path


def plot_learning_curve(rows: list[dict[str, Any]], path: str | os.PathLike, title: str = "") -> None:
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


class MetricsRecorder(TrainerCallback):
    """Writes one ``metrics.jsonl`` row per evaluation (main process only) and refreshes the PNG."""

    def __init__(self, output_dir: str | os.PathLike, session: int = 0, title: str = "") -> None:
        self.output_dir = Path(output_dir)
        self.path = self.output_dir / METRICS_FILE
        self.session = session
        self.title = title
        self.start = time.time()
        self.last_train_loss: float | None = None
        self.last_train_loss_partial = False

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.last_train_loss = float(logs["loss"])
            self.last_train_loss_partial = bool(logs.get(PARTIAL_LOSS_KEY))

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if not state.is_world_process_zero or not metrics:
            return
        row: dict[str, Any] = {
            "step": state.global_step,
            "epoch": state.epoch,
            "train_loss": self.last_train_loss,
        }
        if self.last_train_loss_partial:
            row["train_loss_partial"] = True
        row.update({k: v for k, v in metrics.items() if k != "epoch"})
        row.update(
            {
                "elapsed_s": time.time() - self.start,
                "time": time.time(),
                "session": self.session,
            }
        )
        append_row(self.path, row)
        try:
            plot_learning_curve(read_rows(self.path), self.output_dir / CURVE_FILE, self.title)
        except Exception as error:  # pragma: no cover - a plot must never kill a run
            print(f"warning: could not draw the learning curve: {error}")
