"""Run settings: every field declared once (with its command-line help), validated in ``__post_init__``.

:class:`MethodSettings` (the methods' settings, declared with each method in :mod:`.methods`) and
:class:`RunSettings` (everything else) are what
:class:`transformers.HfArgumentParser` turns into the command line of ``peft-superpos-train`` (each field is
``--name``, also spelled ``--name-with-dashes``); :class:`RunConfig` is a :class:`RunSettings` plus its
:class:`MethodSettings`, as :func:`peft_superpos.harness.run_experiment` takes it and ``run_config.json``
records it. Invalid values raise :class:`.errors.RunConfigError`.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Literal

from ..data import DATA_DIR_ENV, get_task
from ..embedded_models import embedded_models_help
from .engines import check_engine
from .errors import RunConfigError
from .method_options import with_current_names
from .methods import MethodSettings, get_method

__all__ = ["DEV_SPLIT", "EVAL_MODES", "MethodSettings", "RunConfig", "RunSettings", "flatten_run_config"]

EVAL_MODES = ("generate", "rank", "classify")
DEV_SPLIT = "dev"
"""``--eval-split`` of the development split carved from the training file (``--dev-size``)."""


def _help(text: str, **extra: Any) -> dict[str, Any]:
    return {"help": text, **extra}


def _check(condition: bool, name: str, value: Any, expected: str) -> None:
    if not condition:
        raise RunConfigError(f"--{name.replace('_', '-')} {value}: must be {expected}")


def _check_fields(settings: Any, positive: tuple[str, ...] = (), non_negative: tuple[str, ...] = ()) -> None:
    """Range checks of optional numeric fields (None: not given)."""
    for name in positive:
        value = getattr(settings, name)
        _check(value is None or value > 0, name, value, "positive")
    for name in non_negative:
        value = getattr(settings, name)
        _check(value is None or value >= 0, name, value, "zero or more")


@dataclass
class RunSettings:
    """What to train, on which data, for how long, and how to evaluate (all but the method's settings)."""

    _argument_group_name = "run"

    task: str = field(metadata=_help("task name, e.g. cb, rte, copa, mrpc, cola, stsb, sst2 (case-insensitive)"))
    output_dir: str = field(metadata=_help("run folder (resumed if it holds checkpoints)"))
    data_dir: str | None = field(
        default_factory=lambda: os.environ.get(DATA_DIR_ENV),
        metadata=_help(
            "folder with glue/<TASK>/*.tsv and superglue/<TASK>/*.jsonl (default: $PEFT_SUPERPOS_DATA_DIR; "
            "unset: the Hugging Face Hub)"
        ),
    )
    model: str | None = field(
        default=None,
        metadata=_help(f"local path, Hub id, or an embedded model: {embedded_models_help()}"),
    )
    method: str = field(default="superpos", metadata=_help("what to train (the methods are listed below)"))
    max_steps: int | None = field(default=None, metadata=_help("optimizer steps (or give --epochs)"))
    epochs: float | None = field(default=None, metadata=_help("epochs, when --max-steps is not given (default 1)"))
    eval_steps: int = field(default=100, metadata=_help("evaluate every k steps (and at the end)"))
    save_steps: int | None = field(default=None, metadata=_help("checkpoint every k steps (default: --eval-steps)"))
    save_total_limit: int | None = field(default=2, metadata=_help("checkpoints kept"))
    batch_size: int = field(default=8, metadata=_help("global batch of one optimizer step"))
    eval_batch_size: int = field(default=16, metadata=_help("evaluation batch size"))
    gradient_accumulation_steps: int = field(default=1, metadata=_help("batches per optimizer step"))
    max_length: int = field(default=256, metadata=_help("max tokens of source (+ target)"))
    eval_mode: Literal["generate", "rank", "classify"] | None = field(
        default=None,
        metadata=_help(
            "generate: greedy decoding parsed to a label (paper; the default for language models); rank: best "
            "label word by log-likelihood; classify: the classification head (the default for sequence "
            "classifiers)"
        ),
    )
    eval_split: str = field(
        default="validation",
        metadata=_help("validation (MNLI: also _mismatched), or dev: the development split of --dev-size"),
    )
    dev_size: int | None = field(
        default=None,
        metadata=_help(
            "carve this many examples from the training file as a development split (drawn with --dev-seed, never "
            "trained on), for choosing settings without the validation examples that are reported"
        ),
    )
    dev_seed: int = field(default=0, metadata=_help("seed of the development split (the same for every run)"))
    max_train_samples: int | None = field(default=None, metadata=_help("random subset of train"))
    max_eval_samples: int | None = field(default=None, metadata=_help("first N eval examples"))
    seed: int = field(default=42, metadata=_help("seed of the model init, the adapter init and the data order"))
    group_by_length: bool = field(
        default=True, metadata=_help("length-grouped batches (--no-group-by-length: random ones, more padding)")
    )
    eval_only: bool = field(default=False, metadata=_help("evaluate the model (untrained adapter) once; train nothing"))
    zero_shot_floor: bool = field(
        default=False, metadata=_help("also evaluate the base model before training and report it beside the score")
    )
    overwrite_output_dir: bool = field(
        default=False, metadata=_help("start afresh, deleting what the harness wrote into --output-dir")
    )
    disable_tqdm: bool = field(default=False, metadata=_help("no progress bars"))
    deepspeed: str | None = field(
        default=None,
        metadata=_help(
            "DeepSpeed JSON config (e.g. examples/deepspeed/zero3.json: ZeRO-3), on GPUs or CPU; start the processes "
            "with a launcher (deepspeed or torchrun)"
        ),
    )
    fsdp: str | None = field(
        default=None,
        metadata=_help("FSDP through the Trainer, GPUs only: its options, e.g. 'full_shard auto_wrap' (torchrun)"),
    )
    fsdp_config: str | None = field(default=None, metadata=_help("the Trainer's FSDP JSON config, with --fsdp"))

    def __post_init__(self) -> None:
        try:
            get_task(self.task)
            self.method = get_method(self.method).name
        except ValueError as error:
            raise RunConfigError(str(error)) from None
        if self.data_dir is not None and not os.path.isdir(self.data_dir):
            raise RunConfigError(f"--data-dir {self.data_dir} is not a folder")
        if self.max_steps is not None and self.epochs is not None:
            raise RunConfigError("give --max-steps or --epochs, not both")
        _check_fields(
            self,
            positive=(
                "max_steps",
                "epochs",
                "eval_steps",
                "save_steps",
                "save_total_limit",
                "batch_size",
                "eval_batch_size",
                "gradient_accumulation_steps",
                "max_length",
                "max_train_samples",
                "max_eval_samples",
                "dev_size",
            ),
        )
        if self.eval_split == DEV_SPLIT and self.dev_size is None:
            raise RunConfigError("--eval-split dev needs --dev-size: how many training examples to set aside")
        _check(self.eval_mode in (None, *EVAL_MODES), "eval_mode", self.eval_mode, f"one of {', '.join(EVAL_MODES)}")
        check_engine(self)


@dataclass
class RunConfig(RunSettings):
    """One run: its :class:`RunSettings` and the :class:`MethodSettings` of its method."""

    method_settings: MethodSettings = field(default_factory=MethodSettings)

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.method_settings, dict):  # from a config file
            self.method_settings = MethodSettings(**with_current_names(self.method_settings))

    def to_dict(self) -> dict[str, Any]:
        """The settings as ``run_config.json`` records them; ``overwrite_output_dir`` is left out (it is what
        to do with the folder once, not a setting of the run: a recorded run fed back must not delete it)."""
        values = dataclasses.asdict(self)
        del values["overwrite_output_dir"]
        return values

    @classmethod
    def from_parts(cls, run: RunSettings, method: MethodSettings) -> RunConfig:
        return cls(**{f.name: getattr(run, f.name) for f in dataclasses.fields(RunSettings)}, method_settings=method)


def flatten_run_config(values: dict[str, Any]) -> dict[str, Any]:
    """A ``run_config.json``-style dict (``method_settings`` nested) as the flat fields the parser takes."""
    flat = with_current_names({k: v for k, v in values.items() if k != "method_settings"}, drop=())
    nested = values.get("method_settings") or {}
    if not isinstance(nested, dict):
        raise RunConfigError(f"method_settings must be a mapping of settings, got {nested!r}")
    nested = with_current_names(nested)
    clash = sorted(set(flat) & set(nested))
    if clash:
        raise RunConfigError(f"{', '.join(clash)} given both at the top level and under method_settings")
    return {**flat, **nested}
