"""One training/evaluation run: task data + model + method -> Trainer -> the run record (:mod:`.run_record`).

:func:`run_experiment` is what the CLI (``peft-superpos-train``) calls, in phases: prepare the folder, load the
data, make the Trainer's arguments (and start the engine: :mod:`.engines`), load the model, build the adapter,
train, summarise. It works the same under ``torchrun --nproc_per_node N`` or ``accelerate launch --multi_gpu
--num_processes N`` (``batch_size`` is the *global* batch of one optimizer step and is split over the processes,
so the same command trains the same model with 1 or N processes), and under DeepSpeed (``--deepspeed``, also
ZeRO-3 on CPU) or FSDP (``--fsdp``, GPUs).

Resuming: when ``output_dir`` holds Trainer checkpoints (``checkpoint-<step>``) the run continues from the
latest one (model/adapter, optimizer, RNG and data-order state), unless ``overwrite_output_dir`` is set.
``run_config.json`` records the settings that define a run; restarting into a folder made by a different run
is refused. See :mod:`.run_record` for what happens to the rows of ``metrics.jsonl``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from ..data import Task, get_task
from ..metrics import constant_prediction_floor
from ..models import LoadedModel
from .config import RunConfig
from .errors import RunConfigError
from .evaluation import evaluate
from .features import ClassificationFeatures, TextToTextFeatures, install_padding_aware_positions
from .methods import get_method
from .run_data import load_run_data
from .run_folder import is_main_process, last_complete_checkpoint, locked_run_folder, prepare_folder
from .run_model import build_adapter, load_base_model, make_features, resolve_eval_mode
from .run_record import read_floors, write_floors
from .summary import summarise
from .training import train, training_arguments

logger = logging.getLogger(__name__)

__all__ = ["RunConfig", "RunConfigError", "last_complete_checkpoint", "run_experiment"]


def run_experiment(config: RunConfig) -> dict[str, Any]:
    """Train and evaluate; return the content of ``final.json`` (also written by the main process)."""
    wall_start = time.perf_counter()
    task, spec = get_task(config.task), get_method(config.method)
    output_dir = Path(config.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    with locked_run_folder(output_dir):
        start = prepare_folder(config, output_dir)
        if start.finished is not None:
            return start.finished
        data = load_run_data(config, task)
        args = training_arguments(config, spec)  # before the model: under ZeRO-3 it is built partitioned
        load_start = time.perf_counter()
        base = load_base_model(config)
        eval_mode = resolve_eval_mode(config, base)
        features = make_features(base, task, config.max_length)
        floors = compute_floors(config, output_dir, task, data.evaluation, base, features, eval_mode)
        adapter = build_adapter(config, base)
        load_time = time.perf_counter() - load_start
        train_features = features.encode_dataset(data.train)
        training = train(config, task, spec, start, data, train_features, features, adapter, eval_mode, args)
        return summarise(
            config=config,
            task=task,
            method=spec.name,
            start=start,
            eval_mode=eval_mode,
            data=data,
            train_features=train_features,
            features=features,
            floors=floors,
            adapter=adapter,
            training=training,
            load_time=load_time,
            wall_start=wall_start,
        )


def compute_floors(
    config: RunConfig,
    output_dir: Path,
    task: Task,
    evaluation: Any,
    base: LoadedModel,
    features: TextToTextFeatures | ClassificationFeatures,
    eval_mode: str,
) -> dict[str, float | None]:
    """Scores to beat on the same eval examples: ``majority`` (the best constant prediction) and, with
    ``zero_shot_floor``, ``zero_shot`` (the base model before any training, same eval mode; computed once per
    run folder and kept in ``floors.json``)."""
    groups = evaluation["group"] if "group" in evaluation.column_names else None
    floors: dict[str, float | None] = {"majority": constant_prediction_floor(task, evaluation["label"], groups)}
    saved = read_floors(output_dir)
    if "zero_shot" in saved:
        floors["zero_shot"] = saved["zero_shot"]
    elif config.zero_shot_floor and eval_mode != "classify":  # a new classification head is random
        install_padding_aware_positions(base.model)
        result = evaluate(base.model, features, task, evaluation, mode=eval_mode, batch_size=config.eval_batch_size)
        floors["zero_shot"] = result.metrics["score"]
        if is_main_process():
            write_floors(output_dir, floors["zero_shot"], eval_mode)
    return floors
