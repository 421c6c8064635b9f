"""The Trainer callback that records a run: one ``metrics.jsonl`` row per evaluation and the learning curve
(the files themselves: :mod:`.run_record`)."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from .run_record import CURVE_FILE, METRICS_FILE, append_row, plot_learning_curve, read_rows

logger = logging.getLogger(__name__)

__all__ = ["PARTIAL_LOSS_KEY", "MetricsRecorder"]

PARTIAL_LOSS_KEY = "loss_partial"
"""Key the trainer adds to a log whose ``loss`` covers fewer steps than the logging interval."""


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
            logger.warning("could not draw the learning curve: %s", error)
