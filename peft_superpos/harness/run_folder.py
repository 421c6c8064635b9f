"""The run folder: one process at a time, one run per folder, and only the harness's own files are ever deleted.

* :func:`locked_run_folder` holds an exclusive lock (``filelock``, an OS file lock) for the whole run; a second
  process on the same folder is refused with the holder's pid and host. The OS drops the lock of a process that
  dies, so a folder left by a killed run is simply taken over (its stale holder record is overwritten).
* :func:`check_run_identity` compares the settings that define a run with the folder's ``run_config.json``
  and refuses a restart that would mix two runs (or adopt checkpoints of a run it knows nothing about).
* :func:`clear_run_folder` (``--overwrite-output-dir``) deletes only what the harness writes.
* :func:`last_complete_checkpoint` finds the checkpoint a restart resumes from.
* :func:`prepare_folder` does all of this at the start of a run and says where it starts (:class:`RunStart`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from filelock import FileLock, Timeout

from ..atomic_files import atomic_write_text
from .errors import RunFolderError
from .method_options import with_current_names
from .run_record import (
    FINAL_FILE,
    METRICS_FILE,
    RECORD_FILES,
    RUN_CONFIG_FILE,
    RunRecord,
    repair_metrics_file,
)

if TYPE_CHECKING:
    from .config import RunConfig

logger = logging.getLogger(__name__)

__all__ = [
    "RunStart",
    "check_run_identity",
    "clear_run_folder",
    "is_main_process",
    "last_complete_checkpoint",
    "locked_run_folder",
    "prepare_folder",
    "reached_target_step",
]

LOCK_FILE = ".run.lock"
HOLDER_FILE = ".run.lock.holder.json"


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _holder_text(output_dir: Path) -> str:
    try:
        holder = json.loads((output_dir / HOLDER_FILE).read_text())
        return f"pid {holder['pid']} on host {holder['host']}, since {holder['since']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that has not recorded itself yet"


@contextmanager
def locked_run_folder(output_dir: Path) -> Iterator[None]:
    """Hold the exclusive lock of ``output_dir`` (main process only; the other ranks of a DDP run share it).

    Raises :class:`RunFolderError` naming the folder and the holder when another process holds it.
    """
    if not is_main_process():
        yield
        return
    lock = FileLock(output_dir / LOCK_FILE, timeout=0, thread_local=False)
    try:
        lock.acquire()
    except Timeout:
        raise RunFolderError(
            f"{output_dir} is in use by another run ({_holder_text(output_dir)}); wait for it to finish or use "
            "another --output-dir"
        ) from None
    try:
        if (output_dir / HOLDER_FILE).is_file():
            logger.info(
                "Taking over %s from a run that ended without releasing it (%s)", output_dir, _holder_text(output_dir)
            )
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        atomic_write_text(output_dir / HOLDER_FILE, json.dumps(holder))
        yield
    finally:
        (output_dir / HOLDER_FILE).unlink(missing_ok=True)
        lock.release()


def _checkpoints(output_dir: Path) -> list[tuple[int, Path]]:
    """``(step, folder)`` of every ``checkpoint-<digits>`` folder (a user's ``checkpoint-best`` is not one)."""
    found = []
    for folder in output_dir.glob("checkpoint-*"):
        suffix = folder.name.split("-", 1)[1]
        if folder.is_dir() and suffix.isdigit():
            found.append((int(suffix), folder))
    return sorted(found)


def clear_run_folder(output_dir: Path) -> None:
    """Delete what the harness wrote into ``output_dir`` (checkpoints, records, plots); nothing else."""
    for _, folder in _checkpoints(output_dir):
        shutil.rmtree(folder)
    for name in RECORD_FILES:
        path = output_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


_PATH_FIELDS = ("data_dir", "deepspeed", "fsdp_config")


def _normalised(key: str, value: Any) -> Any:
    if key in _PATH_FIELDS and value is not None:
        return os.path.realpath(os.path.expanduser(value))
    return value


def check_run_identity(current: dict[str, Any], output_dir: Path, identity_fields: tuple[str, ...]) -> None:
    """Refuse to continue a run in ``output_dir`` whose ``run_config.json`` differs from ``current`` in one of
    ``identity_fields`` (``method_settings`` is compared per setting, so settings added later default alike),
    or a folder that holds run results but no ``run_config.json``. Then record ``current``.

    Main process only: the others of a DDP run would race with its ``--overwrite-output-dir`` clean-up, and a
    refusal on the main process ends the run."""
    if not is_main_process():
        return
    saved = RunRecord(output_dir).run_config
    if saved is not None:
        changed = []
        for key in identity_fields:
            if key == "method_settings":
                mine, theirs = current.get(key) or {}, with_current_names(saved.get(key) or {})
                changed += [f"{key}.{k}" for k, v in mine.items() if k in theirs and theirs[k] != v]
            elif _normalised(key, saved.get(key)) != _normalised(key, current.get(key)):
                changed.append(key)
        if changed:
            raise RunFolderError(
                f"{output_dir} holds a different run (changed: {', '.join(changed)}); use another --output-dir "
                "or pass --overwrite-output-dir"
            )
    elif _checkpoints(output_dir) or (output_dir / METRICS_FILE).is_file() or (output_dir / FINAL_FILE).is_file():
        raise RunFolderError(
            f"{output_dir} holds checkpoints or results but no {RUN_CONFIG_FILE}, so it is unknown which run made "
            "them; use another --output-dir, or pass --overwrite-output-dir to delete them"
        )
    atomic_write_text(output_dir / RUN_CONFIG_FILE, json.dumps(current, indent=2))


def last_complete_checkpoint(output_dir: Path) -> str | None:
    """The newest ``checkpoint-<step>`` whose ``trainer_state.json`` (Trainer writes it last) is readable.

    Trainer writes checkpoints in place, so a kill during a save leaves a partial folder: the main process
    deletes such folders (they hold nothing a resume could use) and the run resumes from the one before.
    """
    complete = []
    for step, folder in _checkpoints(output_dir):
        try:
            json.loads((folder / "trainer_state.json").read_text())
        except (OSError, ValueError):
            if is_main_process():
                logger.warning("Removing incomplete checkpoint %s (the run was killed while saving it)", folder)
                shutil.rmtree(folder, ignore_errors=True)
            continue
        complete.append((step, folder))
    return str(complete[-1][1]) if complete else None


# Settings that must match for a restart to continue a run (the rest, e.g. eval/save steps, may change).
_IDENTITY_FIELDS = (
    "task",
    "model",
    "method",
    "method_settings",
    "batch_size",
    "max_length",
    "seed",
    "max_train_samples",
    "gradient_accumulation_steps",
    "group_by_length",
    "data_dir",
    "eval_split",
    "dev_size",
    "dev_seed",
    "eval_mode",
    "max_eval_samples",
    "deepspeed",  # a checkpoint resumes only with the engine that wrote it (else optimizer state would be lost)
    "fsdp",
    "fsdp_config",
)


@dataclass(frozen=True)
class RunStart:
    """Where a run starts in its folder: this start's ``session`` number, the ``checkpoint`` it resumes from,
    ``done_step`` when that checkpoint already reached the target step, and ``finished``: the ``final.json`` of a
    run with nothing left to do."""

    output_dir: Path
    session: int
    checkpoint: str | None
    done_step: int | None
    finished: dict[str, Any] | None = None


def prepare_folder(config: RunConfig, output_dir: Path) -> RunStart:
    """Clear the folder (``--overwrite-output-dir``), check that it holds this run, find the checkpoint to
    resume from and repair ``metrics.jsonl`` after a kill."""
    if config.overwrite_output_dir and is_main_process():
        clear_run_folder(output_dir)
    check_run_identity(json.loads(json.dumps(config.to_dict())), output_dir, _IDENTITY_FIELDS)
    record = RunRecord(output_dir)
    if config.eval_only and (final := record.final) is not None:
        return RunStart(output_dir, 0, None, None, finished=final)
    checkpoint = None if config.overwrite_output_dir else last_complete_checkpoint(output_dir)
    done_step = reached_target_step(config, checkpoint)
    if done_step is not None and (final := record.final) is not None and final.get("global_step") == done_step:
        logger.info("%s already finished at step %s: nothing to train", output_dir, done_step)
        return RunStart(output_dir, 0, checkpoint, done_step, finished=final)
    if is_main_process():
        repair_metrics_file(output_dir / METRICS_FILE)
    previous_rows = record.rows(dedupe=False)
    session = 1 + max((int(r.get("session", 0)) for r in previous_rows), default=-1)
    return RunStart(output_dir, session, checkpoint, done_step)


def reached_target_step(config: RunConfig, checkpoint: str | None) -> int | None:
    """The step of ``checkpoint`` when it already reached the requested number of steps, else None.

    Trainer resumed from a checkpoint at ``max_steps`` would take one more step; a finished run is not trained
    again (raise ``--max-steps`` to train it further)."""
    if checkpoint is None:
        return None
    state = json.loads((Path(checkpoint) / "trainer_state.json").read_text())
    target = config.max_steps if config.max_steps is not None else state.get("max_steps")
    step = int(state.get("global_step", 0))
    return step if target is not None and step >= target else None
