"""The distributed engine of a run, as the Trainer takes it: DeepSpeed (``--deepspeed``, a JSON config) or FSDP
(``--fsdp`` options, ``--fsdp-config``). :func:`check_engine` validates them in one place, from the files to the
machine; :func:`start_engine` joins the processes where the Trainer does not (DeepSpeed on CPU).

* DeepSpeed runs on GPUs and on CPU (gloo), started by a launcher (``deepspeed``, ``torchrun``). The harness keeps
  its own optimizer (AdamW at the method's learning rates and weight decay, per parameter group) and its constant
  schedule, so a config's ``optimizer`` and ``scheduler`` sections are refused, and the batch sizes come from
  ``--batch-size`` (``"auto"`` in the config). Under ZeRO-3 the model is built partitioned and the checkpoints hold
  the adapter gathered from every rank (``stage3_gather_16bit_weights_on_model_save``). What cannot run on a
  partitioned model outside the Trainer's engine (the zero-shot floor, ``--eval-only``) and stock prompt tuning,
  whose saving hangs there, are refused.
* FSDP runs through accelerate, on GPUs only: on CPU accelerate would silently train with plain DDP.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from peft import PromptLearningConfig

from ..distributed import ACCELERATE_FSDP_NEEDS_GPUS, start_deepspeed_on_cpu
from .errors import RunConfigError
from .methods import get_method

if TYPE_CHECKING:
    from .config import RunSettings

__all__ = ["SAVE_GATHERED", "check_engine", "start_engine"]

_LAUNCHED = "LOCAL_RANK"  # set by deepspeed, torchrun and accelerate launch for every process they start
_CPU_LAUNCH = "DS_ACCELERATOR=cpu deepspeed --num_gpus 2 --module peft_superpos.train ... --deepspeed CONFIG"
_BATCH_KEYS = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps")
SAVE_GATHERED = "stage3_gather_16bit_weights_on_model_save"


def _read_json(option: str, path: str) -> dict[str, Any]:
    try:
        values = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunConfigError(f"{option} {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise RunConfigError(f"{option} {path}: {error}") from None
    except ValueError as error:
        raise RunConfigError(f"{option} {path}: not valid JSON ({error})") from None
    if not isinstance(values, dict):
        raise RunConfigError(f"{option} {path}: expected a JSON object of settings")
    return values


def _stock_prompt_method(method: str) -> bool:
    """Whether ``method`` is one of peft's own prompt methods, whose saving runs the prompt encoder on rank 0
    alone (a collective under ZeRO-3: it hangs; a DTensor error under FSDP2)."""
    config_class = get_method(method).config_class
    return (
        config_class is not None
        and issubclass(config_class, PromptLearningConfig)
        and config_class.__module__.startswith("peft.")
    )


def _check_deepspeed(settings: RunSettings) -> None:
    option = f"--deepspeed {settings.deepspeed}"
    if importlib.util.find_spec("deepspeed") is None:
        raise RunConfigError(f"{option}: the deepspeed package is not installed (pip install deepspeed)")
    config = _read_json("--deepspeed", settings.deepspeed)
    own = [name for name in ("optimizer", "scheduler") if name in config]
    if own:
        raise RunConfigError(
            f"{option}: remove its {' and '.join(own)} section: the harness trains with its own AdamW (the method's "
            "learning rates and weight decay per parameter group) at a constant rate, which DeepSpeed's would replace "
            '(and on CPU "AdamW" compiles a FusedAdam op, minutes)'
        )
    fixed = [f"{key}={config[key]!r}" for key in _BATCH_KEYS if config.get(key, "auto") != "auto"]
    if fixed:
        raise RunConfigError(
            f'{option}: set {", ".join(fixed)} to "auto" or leave them out: --batch-size (global) and '
            "--gradient-accumulation-steps set them"
        )
    zero = config.get("zero_optimization") or {}
    if not isinstance(zero, dict):
        raise RunConfigError(f"{option}: zero_optimization must be a JSON object")
    if zero.get("stage") == 3:
        if zero.get(SAVE_GATHERED) is not True:
            raise RunConfigError(
                f'{option}: set "{SAVE_GATHERED}": true under zero_optimization: with ZeRO-3 the checkpoints save '
                "the adapter gathered from every rank, and without it they would hold none"
            )
        partitioned = "ZeRO-3 builds the model partitioned across the processes"
        if settings.zero_shot_floor:
            raise RunConfigError(
                f"--zero-shot-floor with {option}: {partitioned}, and the base model runs only inside the Trainer's "
                "engine; compute the floor in a run without --deepspeed (it does not depend on training)"
            )
        if settings.eval_only:
            raise RunConfigError(
                f"--eval-only with {option}: {partitioned}, and it runs only inside the Trainer's training engine; "
                "evaluate the untrained adapter without --deepspeed, or train with --max-steps"
            )
        if _stock_prompt_method(settings.method):
            raise RunConfigError(
                f"--method {settings.method} with {option}: peft saves its prompt on rank 0 alone, a collective under "
                "ZeRO-3 (the run would hang at its first checkpoint); train superpos, residual or dept (our "
                "methods save on every rank), or use ZeRO stage 1 or 2"
            )
    if not torch.cuda.is_available() and _LAUNCHED not in os.environ:
        raise RunConfigError(
            f"{option} without GPUs: start the processes with a launcher, e.g. {_CPU_LAUNCH} (or torchrun "
            "--nproc_per_node 2 -m peft_superpos.train ...)"
        )


def _check_fsdp(settings: RunSettings) -> None:
    from transformers.trainer_utils import FSDPOption

    option = f"--fsdp {settings.fsdp!r}"
    known = [o.value for o in FSDPOption]
    unknown = [word for word in settings.fsdp.split() if word not in known]
    if unknown or not settings.fsdp.split():
        raise RunConfigError(f"{option}: expected space-separated options of {', '.join(known)}")
    if settings.fsdp_config is not None:
        _read_json("--fsdp-config", settings.fsdp_config)
    if _stock_prompt_method(settings.method):
        raise RunConfigError(
            f"--method {settings.method} with {option}: peft saves its prompt on rank 0 alone, which fails on "
            "FSDP's sharded parameters; train superpos, residual or dept (our methods save on every rank)"
        )
    if not torch.cuda.is_available():
        raise RunConfigError(
            f"{option}: {ACCELERATE_FSDP_NEEDS_GPUS}. On CPU: leave out --fsdp and train with DDP (torchrun "
            f"--nproc_per_node 2 -m peft_superpos.train ...), or shard with DeepSpeed ZeRO-3 ({_CPU_LAUNCH})"
        )
    if _LAUNCHED not in os.environ:
        raise RunConfigError(
            f"{option}: start the processes with torchrun or accelerate launch (a single process would train "
            "without FSDP)"
        )


def check_engine(settings: RunSettings) -> None:
    """Raise :class:`RunConfigError` naming the problem and the way out when ``--deepspeed`` / ``--fsdp`` /
    ``--fsdp-config`` cannot run as given: a missing or malformed file, a config the harness cannot honour, an
    option that does not fit the method or the other settings, or a machine or start it cannot run on."""
    if settings.deepspeed is not None and (settings.fsdp is not None or settings.fsdp_config is not None):
        raise RunConfigError("give --deepspeed or --fsdp, not both")
    if settings.fsdp_config is not None and settings.fsdp is None:
        raise RunConfigError(f"--fsdp-config {settings.fsdp_config} needs --fsdp (e.g. --fsdp 'full_shard auto_wrap')")
    if settings.deepspeed is not None:
        _check_deepspeed(settings)
    if settings.fsdp is not None:
        _check_fsdp(settings)


def start_engine(settings: RunSettings) -> None:
    """Before ``TrainingArguments``: DeepSpeed on CPU joins the processes into its gloo group (on GPUs the
    Trainer does it)."""
    if settings.deepspeed is not None and not torch.cuda.is_available():
        start_deepspeed_on_cpu()
