"""One training/evaluation run: task data + model + method -> Trainer -> metrics.jsonl, final.json, PNG.

:func:`run_experiment` is what the CLI (``peft-superpos-train``) calls; it works the same under
``accelerate launch --num_processes N`` (``batch_size`` is the *global* batch of one optimizer step and is
split over the processes, so the same command trains the same model with 1 or N processes).

Resuming: when ``output_dir`` holds Trainer checkpoints (``checkpoint-<step>``) the run continues from the
latest one (model/adapter, optimizer, RNG and data-order state), unless ``overwrite_output_dir`` is set.
``run_config.json`` records the settings that define a run; restarting into a folder made by a different run
is refused. See :mod:`.callbacks` for what happens to the rows of ``metrics.jsonl``.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
import warnings
from pathlib import Path
from typing import Any

import peft
import torch
import transformers
from peft import get_peft_model
from transformers import TrainerState, TrainingArguments, set_seed

from .. import disable_dropout
from ..data import find_split_file, first_examples, get_task, load_task_split, split_off_dev
from ..models import load_model_and_tokenizer
from ..optim import make_param_groups, prompt_step_size
from .callbacks import (
    CURVE_FILE,
    FINAL_FILE,
    METRICS_FILE,
    MetricsRecorder,
    atomic_write_text,
    json_safe,
    latest_rows,
    plot_learning_curve,
    read_rows,
    repair_metrics_file,
)
from .config import DEV_SPLIT, RunConfig
from .errors import DataError, ModelLoadError, RunConfigError
from .evaluation import constant_prediction_floor, evaluate
from .features import ClassificationFeatures, TextToTextFeatures, install_padding_aware_positions
from .methods import get_method
from .run_folder import (
    FLOORS_FILE,
    check_run_identity,
    clear_run_folder,
    is_main_process,
    last_complete_checkpoint,
    locked_run_folder,
)
from .trainer import EndOfTrainingCallback, TextToTextTrainer

logger = logging.getLogger(__name__)

__all__ = ["RunConfig", "RunConfigError", "build_model", "last_complete_checkpoint", "run_experiment"]

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
)


def _world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def load_data(config: RunConfig, task: Any) -> tuple[Any, Any]:
    """``(train, eval)`` datasets: the development split (``--dev-size``) is set aside from train first, and is
    the eval set with ``--eval-split dev``."""
    train = _load_split(task, "train", config.data_dir)
    if config.dev_size is not None:
        try:
            train, dev = split_off_dev(train, config.dev_size, config.dev_seed)
        except ValueError as error:
            raise DataError(f"{task.display_name}: {error}") from None
    if config.eval_split == DEV_SPLIT:
        evaluation = dev
    else:
        evaluation = _load_split(task, config.eval_split, config.data_dir)
    if config.max_train_samples is not None and config.max_train_samples < len(train):
        train = train.shuffle(seed=config.seed).select(range(config.max_train_samples))
    if config.max_eval_samples is not None:
        evaluation = first_examples(evaluation, config.max_eval_samples)  # the first N, for comparable runs
    if len(train) == 0 or len(evaluation) == 0:
        raise DataError(f"{task.display_name}: empty train or {config.eval_split} split")
    return train, evaluation


def _null_field(value: Any, where: str = "") -> str | None:
    """The path of the first JSON null inside ``value`` (e.g. ``premise`` or ``passage.questions[0]``)."""
    if value is None:
        return where or "the row"
    if isinstance(value, dict):
        items = ((f"{where}.{k}" if where else str(k), v) for k, v in value.items())
    elif isinstance(value, list):
        items = ((f"{where}[{i}]", v) for i, v in enumerate(value))
    else:
        return None
    return next((found for key, v in items if (found := _null_field(v, key)) is not None), None)


def check_data_file(path: Path) -> None:
    """Raise :class:`DataError` naming the file and line of the first line that is not UTF-8, or (``.jsonl``)
    of the first row with a null field (which would otherwise be trained on as the text "None")."""
    with path.open("rb") as handle:
        for lineno, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise DataError(
                    f"{path}, line {lineno}: not valid UTF-8 ({error.reason} at byte {error.start})"
                ) from None
            if path.suffix != ".jsonl" or not line.strip():
                continue
            try:
                null = _null_field(json.loads(line))
            except ValueError:
                continue  # the loader names malformed JSON itself
            if null is not None:
                raise DataError(f"{path}, line {lineno}: field {null!r} is null; give it a value or drop the row")


def _load_split(task: Any, split: str, data_dir: str | None) -> Any:
    """One split through :func:`peft_superpos.data.load_task_split`, its local file checked first; problems
    with the files become :class:`DataError`."""
    try:
        if data_dir is not None:
            check_data_file(find_split_file(task, split, data_dir)[0])
        return load_task_split(task, split, data_dir)
    except DataError:
        raise
    except (FileNotFoundError, ValueError) as error:
        raise DataError(str(error)) from error
    except RuntimeError as error:  # no data_dir: the Hub could not be reached (the message says what to do)
        if data_dir is not None:
            raise
        raise DataError(str(error)) from error


def load_base_model(config: RunConfig) -> tuple[Any, Any]:
    """``(model, tokenizer)`` of ``config.model``, seeded (a new classification head is repeatable)."""
    task = get_task(config.task)
    folder = Path(config.model).expanduser() if config.model else None
    if folder is not None and folder.is_dir() and not any((folder / name).is_file() for name in _TOKENIZER_FILES):
        raise ModelLoadError(
            f"--model {config.model} has no tokenizer (none of {', '.join(_TOKENIZER_FILES)}); save it into the "
            "folder with tokenizer.save_pretrained(...)"
        )
    set_seed(config.seed)
    try:
        return load_model_and_tokenizer(config.model, num_labels=1 if task.is_regression else len(task.choices))
    except (OSError, ValueError) as error:  # FileNotFoundError included
        raise ModelLoadError(f"could not load --model {config.model}: {' '.join(str(error).split())}") from error


_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "vocab.json",
    "vocab.txt",
    "spiece.model",
)


def build_model(
    config: RunConfig, base: tuple[Any, Any] | None = None
) -> tuple[Any, Any, Any, dict[str, float] | None]:
    """``(model, tokenizer, peft_config or None, lr_by_name)`` for ``config.method`` (seeded), wrapping
    ``base`` (``(model, tokenizer)`` from :func:`load_base_model`, loaded here when not given)."""
    spec = get_method(config.method)
    settings = config.method_settings
    model, tokenizer = base if base is not None else load_base_model(config)
    if not settings.keep_dropout:
        disable_dropout(model)
    set_seed(config.seed)  # prompt inits drawn from torch's RNG (stock prompt tuning) are repeatable
    peft_config = spec.build(config, model, tokenizer)
    lr_by_name = None
    if peft_config is not None:
        model = get_peft_model(model, peft_config)
        lr_by_name = peft_config.lr_by_name() if hasattr(peft_config, "lr_by_name") else None
    install_padding_aware_positions(model.get_base_model() if peft_config is not None else model)
    return model, tokenizer, peft_config, lr_by_name


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


def _training_arguments(config: RunConfig, spec_lr: float, prompt_method: bool) -> Any:
    world = _world_size()
    if config.batch_size % world:
        raise RunConfigError(f"--batch-size {config.batch_size} is not divisible by the {world} processes")
    epochs = config.epochs if config.epochs is not None else 1.0
    max_steps = config.max_steps if config.max_steps is not None else -1  # -1: by epochs
    save_steps = config.save_steps or config.eval_steps
    return TrainingArguments(
        output_dir=config.output_dir,
        per_device_train_batch_size=config.batch_size // world,
        per_device_eval_batch_size=config.eval_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        max_steps=max_steps,
        num_train_epochs=epochs,
        learning_rate=spec_lr,
        lr_scheduler_type="constant",
        warmup_steps=0,
        eval_strategy="steps",
        eval_steps=config.eval_steps,
        logging_strategy="steps",
        logging_steps=config.eval_steps,
        save_strategy="steps",
        save_steps=save_steps,
        save_total_limit=config.save_total_limit,
        seed=config.seed,
        data_seed=config.seed,
        remove_unused_columns=False,
        label_names=["labels"],
        report_to="none",
        dataloader_num_workers=0,
        average_tokens_across_devices=True,
        ddp_find_unused_parameters=False if prompt_method else None,
        disable_tqdm=config.disable_tqdm or None,  # None: as the logging level says
        use_cpu=not torch.cuda.is_available(),
    )


def _count_parameters(model: Any) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def run_experiment(config: RunConfig) -> dict[str, Any]:
    """Train and evaluate; return the content of ``final.json`` (also written by the main process)."""

    wall_start = time.perf_counter()
    task = get_task(config.task)
    spec = get_method(config.method)
    output_dir = Path(config.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    with locked_run_folder(output_dir):
        return _run_in_folder(config, task, spec, output_dir, wall_start)


def _run_in_folder(config: RunConfig, task: Any, spec: Any, output_dir: Path, wall_start: float) -> dict[str, Any]:
    """:func:`run_experiment` once this process holds ``output_dir``."""
    if config.overwrite_output_dir and is_main_process():
        clear_run_folder(output_dir)
    check_run_identity(json.loads(json.dumps(config.to_dict())), output_dir, _IDENTITY_FIELDS)
    final_file = output_dir / FINAL_FILE
    if config.eval_only and final_file.is_file():
        return json.loads(final_file.read_text())
    checkpoint = None if config.overwrite_output_dir else last_complete_checkpoint(output_dir)
    done_step = reached_target_step(config, checkpoint)
    if done_step is not None and final_file.is_file():
        saved = json.loads(final_file.read_text())
        if saved.get("global_step") == done_step:
            logger.info("%s already finished at step %s: nothing to train", output_dir, done_step)
            return saved
    if is_main_process():
        repair_metrics_file(output_dir / METRICS_FILE)
    previous_rows = read_rows(output_dir / METRICS_FILE, dedupe=False)
    session = 1 + max((int(r.get("session", 0)) for r in previous_rows), default=-1)

    train_raw, eval_raw = load_data(config, task)
    load_start = time.perf_counter()
    base = load_base_model(config)
    classifier = type(base[0]).__name__.endswith("ForSequenceClassification")
    eval_mode = _resolve_eval_mode(config, classifier)
    features = _make_features(base, task, config, classifier)
    floors = _floors(config, output_dir, task, eval_raw, base, features, eval_mode)
    model, tokenizer, peft_config, lr_by_name = build_model(config, base)
    load_time = time.perf_counter() - load_start
    train_features = features.encode_dataset(train_raw)

    lr = spec.resolved_lr(config.method_settings)
    weight_decay = spec.resolved_weight_decay(config.method_settings)
    step_size = prompt_step_size(model, lr)  # at init: built from the config, before a checkpoint is restored
    groups = make_param_groups(model, weight_decay, lr_by_name=lr_by_name)
    optimizer = torch.optim.AdamW(groups, lr=lr)
    args = _training_arguments(config, lr, spec.is_prompt_method)
    recorder = MetricsRecorder(output_dir, session=session, title=f"{task.display_name} / {spec.name}")
    trainer = TextToTextTrainer(
        model=model,
        args=args,
        train_dataset=train_features,
        eval_dataset=eval_raw,
        data_collator=features.collator(),
        optimizers=(optimizer, None),
        callbacks=[recorder, EndOfTrainingCallback()],
        task=task,
        features=features,
        eval_mode=eval_mode,
        raw_eval_dataset=eval_raw,
        group_by_length=config.group_by_length,
    )
    trainable, total = _count_parameters(model)
    train_metrics: dict[str, Any] = {}
    if config.eval_only:
        trainer.evaluate()
    elif done_step is not None:  # stopped after its last checkpoint, before final.json: train nothing
        logger.info(
            "%s reached step %s before it stopped: writing final.json from %s", output_dir, done_step, checkpoint
        )
        trainer.state = TrainerState.load_from_json(str(Path(checkpoint) / "trainer_state.json"))
    else:
        if checkpoint:
            logger.info("Resuming from %s", checkpoint)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Position ids are not supported")
            train_metrics = trainer.train(resume_from_checkpoint=checkpoint).metrics

    final: dict[str, Any] = {}
    if trainer.is_world_process_zero():
        rows, superseded = latest_rows(read_rows(output_dir / METRICS_FILE, dedupe=False))
        scored = [r for r in rows if r.get("eval_score") is not None]
        best = max(scored, key=lambda r: r["eval_score"]) if scored else None
        session_rows = [r for r in rows if r.get("session") == session]
        final = {
            "task": task.name,
            "method": spec.name,
            "config": json.loads(json.dumps(config.to_dict())),
            "eval_mode": eval_mode,
            "hyperparameters": {
                "lr": lr,
                "weight_decay": weight_decay,
                "lr_by_name": lr_by_name,
                "scheduler": "constant",
                "optimizer": "AdamW",
            },
            "step_size": step_size,
            "peft_config": peft_config.to_dict() if peft_config is not None else None,
            "model_class": type(trainer.model.get_base_model() if peft_config is not None else trainer.model).__name__,
            "trainable_parameters": trainable,
            "total_parameters": total,
            "world_size": trainer.args.world_size,
            "global_step": trainer.state.global_step,
            "resumed_from": checkpoint,
            "session": session,
            "floors": floors,
            "final": rows[-1] if rows else None,
            "best": best,
            "final_train_loss": rows[-1].get("train_loss") if rows else None,
            "superseded_rows": superseded,
            "data": {
                "train_examples": len(train_features),
                "eval_examples": len(eval_raw),
                "max_length": config.max_length,
                "train_truncated": int(sum(train_features["truncated"])),
                "eval_truncated": sum(features.truncated_source_ids(s)[1] for s in eval_raw["source"]),
            },
            "throughput": _throughput(trainer, train_metrics, session_rows),
            "environment": environment(trainer.args.device),
            "timings": {
                "model_load_s": load_time,
                "train_runtime_s": train_metrics.get("train_runtime"),
                "train_steps_per_second": train_metrics.get("train_steps_per_second"),
                "eval_time_s": sum(r.get("eval_eval_time_s") or 0.0 for r in session_rows),
                "wall_s": time.perf_counter() - wall_start,
            },
        }
        atomic_write_text(output_dir / FINAL_FILE, json.dumps(json_safe(final), indent=2))
        if rows:
            plot_learning_curve(rows, output_dir / CURVE_FILE, f"{task.display_name} / {spec.name}")
    return final


def _resolve_eval_mode(config: RunConfig, classifier: bool) -> str:
    if config.eval_mode is None:
        return "classify" if classifier else "generate"
    if (config.eval_mode == "classify") != classifier:
        kind = "a sequence classifier" if classifier else "a language model"
        raise RunConfigError(f"--eval-mode {config.eval_mode} does not apply to {config.model or 'the model'} ({kind})")
    return config.eval_mode


def _make_features(
    base: tuple[Any, Any], task: Any, config: RunConfig, classifier: bool
) -> TextToTextFeatures | ClassificationFeatures:
    model, tokenizer = base
    if classifier:
        return ClassificationFeatures(tokenizer, task, config.max_length)
    return TextToTextFeatures(tokenizer, bool(getattr(model.config, "is_encoder_decoder", False)), config.max_length)


def _floors(
    config: RunConfig,
    output_dir: Path,
    task: Any,
    eval_raw: Any,
    base: tuple[Any, Any],
    features: TextToTextFeatures | ClassificationFeatures,
    eval_mode: str,
) -> dict[str, float | None]:
    """Scores to beat on the same eval examples: ``majority`` (the best constant prediction) and, with
    ``zero_shot_floor``, ``zero_shot`` (the base model before any training, same eval mode; computed once per
    run folder and kept in ``floors.json``)."""
    groups = eval_raw["group"] if "group" in eval_raw.column_names else None
    floors: dict[str, float | None] = {"majority": constant_prediction_floor(task, eval_raw["label"], groups)}
    path = output_dir / FLOORS_FILE
    saved = json.loads(path.read_text()) if path.is_file() else {}
    if "zero_shot" in saved:
        floors["zero_shot"] = saved["zero_shot"]
    elif config.zero_shot_floor and eval_mode != "classify":  # a new classification head is random
        model = base[0]
        install_padding_aware_positions(model)
        result = evaluate(model, features, task, eval_raw, mode=eval_mode, batch_size=config.eval_batch_size)
        floors["zero_shot"] = result.metrics["score"]
        if is_main_process():
            atomic_write_text(path, json.dumps({"zero_shot": floors["zero_shot"], "eval_mode": eval_mode}))
    return floors


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
