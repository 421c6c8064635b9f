"""The last phase of a run: what it did, on what, and how fast, as ``final.json`` (:func:`.run_record.final_record`)."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any

import peft
import torch
import transformers

from ..data import Task
from ..distributed import full_shape
from .config import RunConfig
from .features import ClassificationFeatures, TextToTextFeatures
from .run_data import RunData
from .run_folder import RunStart
from .run_model import Adapter
from .run_record import CURVE_FILE, METRICS_FILE, final_record, latest_rows, plot_learning_curve, read_rows, write_final
from .training import Training

__all__ = ["environment", "summarise"]


def summarise(
    *,
    config: RunConfig,
    task: Task,
    method: str,
    start: RunStart,
    eval_mode: str,
    data: RunData,
    train_features: Any,
    features: TextToTextFeatures | ClassificationFeatures,
    floors: dict[str, float | None],
    adapter: Adapter,
    training: Training,
    load_time: float,
    wall_start: float,
) -> dict[str, Any]:
    """Write ``final.json`` and the learning curve from the rows of ``metrics.jsonl`` (main process only: the
    others return {}); return the content of ``final.json``."""
    trainer, train_metrics, output_dir = training.trainer, training.metrics, start.output_dir
    if not trainer.is_world_process_zero():
        return {}
    rows, superseded = latest_rows(read_rows(output_dir / METRICS_FILE, dedupe=False))
    session_rows = [r for r in rows if r.get("session") == start.session]
    parameters = list(adapter.model.parameters())
    final = final_record(
        run={
            "task": task.name,
            "method": method,
            "config": json.loads(json.dumps(config.to_dict())),
            "eval_mode": eval_mode,
            "hyperparameters": {
                "lr": training.lr,
                "weight_decay": training.weight_decay,
                "lr_by_name": adapter.lr_by_name,
                "scheduler": "constant",
                "optimizer": "AdamW",
            },
            "step_size": training.step_size,
        },
        model={
            "peft_config": adapter.peft_config.to_dict() if adapter.peft_config is not None else None,
            "model_class": type(adapter.base_model).__name__,
            "trainable_parameters": sum(full_shape(p).numel() for p in parameters if p.requires_grad),
            "total_parameters": sum(full_shape(p).numel() for p in parameters),
        },
        progress={
            "world_size": trainer.args.world_size,
            "global_step": trainer.state.global_step,
            "resumed_from": start.checkpoint,
            "session": start.session,
        },
        floors=floors,
        rows=rows,
        superseded=superseded,
        data={
            "train_examples": len(train_features),
            "eval_examples": len(data.evaluation),
            "max_length": config.max_length,
            "train_truncated": int(sum(train_features["truncated"])),
            "eval_truncated": sum(features.truncated_source_ids(s)[1] for s in data.evaluation["source"]),
        },
        throughput=_throughput(trainer, train_metrics, session_rows),
        environment=environment(trainer.args.device),
        timings={
            "model_load_s": load_time,
            "train_runtime_s": train_metrics.get("train_runtime"),
            "train_steps_per_second": train_metrics.get("train_steps_per_second"),
            "eval_time_s": sum(r.get("eval_eval_time_s") or 0.0 for r in session_rows),
            "wall_s": time.perf_counter() - wall_start,
        },
    )
    write_final(output_dir, final)
    if rows:
        plot_learning_curve(rows, output_dir / CURVE_FILE, f"{task.display_name} / {method}")
    return final


def _processor_name() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux), else what ``platform`` knows."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def environment(device: torch.device) -> dict[str, Any]:
    """Where this session of the run computed: device name, CPU threads and library versions (timings and
    floating-point results depend on them)."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else _processor_name()
    return {
        "device": f"{device.type}: {name}",
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
    }


def _throughput(trainer: Any, train_metrics: dict[str, Any], session_rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Non-padding tokens per second and padding share, of training and of evaluation (this session)."""
    padding = trainer.train_padding
    runtime = train_metrics.get("train_runtime")
    eval_tokens = sum(r.get("eval_tokens") or 0 for r in session_rows)
    eval_time = sum(r.get("eval_eval_time_s") or 0.0 for r in session_rows)
    eval_padding = [r["eval_padding_fraction"] for r in session_rows if r.get("eval_padding_fraction") is not None]
    return {
        "train_tokens": padding.real,
        "train_padding_fraction": padding.fraction if padding.total else None,
        "train_tokens_per_s": padding.real / runtime if runtime and padding.real else None,
        "eval_tokens": eval_tokens,
        "eval_padding_fraction": sum(eval_padding) / len(eval_padding) if eval_padding else None,
        "eval_tokens_per_s": eval_tokens / eval_time if eval_time else None,
    }
