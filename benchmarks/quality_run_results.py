"""One run's results in the results folder (``benchmarks/results/quality/<model>/<task>/<run>/``), as the quality
suite's runner keeps them: whether the run is done, its small results copied in from its run folder, and a failure
recorded in ``failures.jsonl``."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from benchmarks.quality_grid import FAILURES_FILE, RunSpec, finished_final
from benchmarks.quality_predictions import COMPACT_FILE, compact_bytes, read_evaluations, write_compact
from peft_superpos.atomic_files import atomic_write
from peft_superpos.harness.run_record import append_row

#: A run's predictions are copied into the results only while their compressed file stays below this size.
PREDICTIONS_MAX_BYTES = 200_000


def run_status(spec: RunSpec, runs_dir: Path, results_dir: Path) -> str:
    """``done`` (results at the step budget), ``partial`` (something started) or ``todo``."""
    if finished_final(spec, results_dir) is not None:
        return "done"
    run_dir = runs_dir / spec.run_id
    started = (results_dir / spec.run_id / "final.json").is_file() or (run_dir / "metrics.jsonl").is_file()
    return "partial" if started or any(run_dir.glob("checkpoint-*")) else "todo"


def copy_results(run_dir: Path, target: Path) -> list[Path]:
    """Copy a run's small results into ``target``, each file atomically and ``final.json`` last (its presence
    marks the copy complete): ``metrics.jsonl``, and the predictions of every evaluation in one compressed file
    (``quality_predictions.py``) while it stays below :data:`PREDICTIONS_MAX_BYTES`."""
    target.mkdir(parents=True, exist_ok=True)
    copied = []

    def copy(name: str) -> None:
        atomic_write(target / name, lambda temporary: shutil.copyfile(run_dir / name, temporary))
        copied.append(target / name)

    if (run_dir / "metrics.jsonl").is_file():
        copy("metrics.jsonl")
    evaluations = read_evaluations(run_dir)
    data = compact_bytes(evaluations)
    if evaluations and len(data) <= PREDICTIONS_MAX_BYTES:
        copied.append(write_compact(target / COMPACT_FILE, evaluations, data))
    copy("final.json")
    return copied


def record_failure(results_dir: Path, spec: RunSpec, reason: str, log_path: Path | None = None) -> Path:
    """Append one line to ``failures.jsonl`` (run id, reason, the end of the log)."""
    tail = ""
    if log_path is not None and log_path.is_file():
        tail = log_path.read_text(errors="replace")[-2000:]
    path = results_dir / FAILURES_FILE
    results_dir.mkdir(parents=True, exist_ok=True)
    row = {"run_id": spec.run_id, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "reason": reason, "log_tail": tail}
    append_row(path, row)
    return path
