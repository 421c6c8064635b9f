"""The training phase of a run: AdamW at the method's constant learning rate through the Trainer subclass,
resumed from the run's last checkpoint."""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerState, TrainingArguments

from ..data import Task
from ..optim import prompt_step_size
from .callbacks import MetricsRecorder
from .config import RunConfig
from .engines import start_engine
from .errors import RunConfigError
from .features import ClassificationFeatures, TextToTextFeatures
from .methods import MethodSpec
from .run_data import RunData
from .run_folder import RunStart
from .run_model import Adapter
from .task_trainer import EndOfTrainingCallback, TaskTrainer

logger = logging.getLogger(__name__)

__all__ = ["Training", "train", "training_arguments"]


@dataclass(frozen=True)
class Training:
    """A finished training phase: the trainer (its state and padding counts), Trainer's ``train`` metrics ({}
    when nothing was trained), and the optimizer settings: ``lr``, ``weight_decay`` and the prompt's
    ``step_size`` at init."""

    trainer: TaskTrainer
    metrics: dict[str, Any]
    lr: float
    weight_decay: float
    step_size: dict[str, float] | None


def train(
    config: RunConfig,
    task: Task,
    spec: MethodSpec,
    start: RunStart,
    data: RunData,
    train_features: Any,
    features: TextToTextFeatures | ClassificationFeatures,
    adapter: Adapter,
    eval_mode: str,
    args: TrainingArguments,
) -> Training:
    """Train (or, with ``--eval-only``, evaluate once) with AdamW at the method's constant learning rate,
    resuming from ``start.checkpoint``; a run that already reached its last step only gets its trainer state.
    ``args`` are :func:`training_arguments`."""
    step_size = prompt_step_size(adapter.model, args.learning_rate)  # at init: before a checkpoint is restored
    recorder = MetricsRecorder(start.output_dir, session=start.session, title=f"{task.display_name} / {spec.name}")
    trainer = TaskTrainer(
        model=adapter.model,
        args=args,
        train_dataset=train_features,
        eval_dataset=data.evaluation,
        data_collator=features.collator(),
        callbacks=[recorder, EndOfTrainingCallback()],
        task=task,
        features=features,
        eval_mode=eval_mode,
        raw_eval_dataset=data.evaluation,
        group_by_length=config.group_by_length,
        lr_by_name=adapter.lr_by_name,
    )
    train_metrics: dict[str, Any] = {}
    if config.eval_only:
        trainer.evaluate()
    elif start.done_step is not None:  # stopped after its last checkpoint, before final.json: train nothing
        logger.info(
            "%s reached step %s before it stopped: writing final.json from %s",
            start.output_dir,
            start.done_step,
            start.checkpoint,
        )
        trainer.state = TrainerState.load_from_json(str(Path(start.checkpoint) / "trainer_state.json"))
    else:
        if start.checkpoint:
            logger.info("Resuming from %s", start.checkpoint)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Position ids are not supported")
            train_metrics = trainer.train(resume_from_checkpoint=start.checkpoint).metrics
    return Training(trainer, train_metrics, args.learning_rate, args.weight_decay, step_size)


def training_arguments(config: RunConfig, spec: MethodSpec) -> TrainingArguments:
    """The Trainer's arguments of the run: the method's learning rate and weight decay (the optimizer is
    :meth:`.TaskTrainer.create_optimizer`), ``--batch-size`` split over the processes, and the engine
    (``--deepspeed``, ``--fsdp``), started first where the Trainer does not start it (:mod:`.engines`). Make them
    before the model: under ZeRO-3 the model is then built partitioned (their DeepSpeed config is alive)."""
    start_engine(config)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if config.batch_size % world:
        raise RunConfigError(f"--batch-size {config.batch_size} is not divisible by the {world} processes")
    return TrainingArguments(
        output_dir=config.output_dir,
        per_device_train_batch_size=config.batch_size // world,
        per_device_eval_batch_size=config.eval_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        max_steps=config.max_steps if config.max_steps is not None else -1,  # -1: by epochs
        num_train_epochs=config.epochs if config.epochs is not None else 1.0,
        learning_rate=spec.resolved_lr(config.method_settings),
        weight_decay=spec.resolved_weight_decay(config.method_settings),
        lr_scheduler_type="constant",
        warmup_steps=0,
        eval_strategy="steps",
        eval_steps=config.eval_steps,
        logging_strategy="steps",
        logging_steps=config.eval_steps,
        save_strategy="steps",
        save_steps=config.save_steps or config.eval_steps,
        save_total_limit=config.save_total_limit,
        seed=config.seed,
        data_seed=config.seed,
        remove_unused_columns=False,
        label_names=["labels"],
        report_to="none",
        dataloader_num_workers=0,
        average_tokens_across_devices=True,
        ddp_find_unused_parameters=False if spec.is_prompt_method else None,
        disable_tqdm=config.disable_tqdm or None,  # None: as the logging level says
        use_cpu=not torch.cuda.is_available(),
        deepspeed=config.deepspeed,
        fsdp=config.fsdp,
        fsdp_config=config.fsdp_config,
    )
