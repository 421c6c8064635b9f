"""Command line: train and evaluate one method on one task.

    peft-superpos-train cb --data-dir ../shared/data --max-steps 40 --eval-steps 20 --output-dir runs/cb-superpos
    python -m peft_superpos.train rte --method lora --eval-mode rank --output-dir runs/rte-lora
    peft-superpos-train run.yaml                      # the same settings from a JSON or YAML file
    peft-superpos-train --config runs/cb-superpos/run_config.json --output-dir runs/cb-again   # a run again
    torchrun --nproc_per_node 2 -m peft_superpos.train cb ...   # DDP (same --batch-size: it is global)
    deepspeed --num_gpus 2 --module peft_superpos.train cb ... --deepspeed examples/deepspeed/zero3.json   # ZeRO-3

The options are the fields of :class:`peft_superpos.harness.RunSettings` and
:class:`peft_superpos.harness.MethodSettings`, parsed by :class:`transformers.HfArgumentParser` (each field is
``--name``, also spelled with dashes); a config file holds the same fields (flat, or with the method's under
``method_settings`` as in ``run_config.json``) and options given beside it override it. Defaults are the
paper's per method (see ``peft_superpos.harness.methods``). Writes ``metrics.jsonl``, ``final.json``,
``learning_curve.png`` and Trainer checkpoints into ``--output-dir``; starting the same command again resumes
from the last checkpoint.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .harness.config import MethodSettings, RunConfig, RunSettings, flatten_run_config
from .harness.errors import RunConfigError, UserInputError

__all__ = ["build_parser", "main", "parse_run_config"]

CONFIG_SUFFIXES = (".json", ".yaml", ".yml")
_REQUIRED = ("task", "output_dir")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: ...)" only where it tells something: not after a help text that states its default
    itself, and not for a default of None (no value given) or a flag's False."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    """``transformers.HfArgumentParser`` over :class:`RunSettings` and :class:`MethodSettings`, plus the task
    (or a config file) as the first positional argument and ``--config``."""
    from transformers import HfArgumentParser

    from .harness.methods import METHODS

    methods = "; ".join(spec.summary() for spec in METHODS.values())
    parser = HfArgumentParser(
        (RunSettings, MethodSettings),
        prog="peft-superpos-train",
        description="Train and evaluate SuperPos-Prompt (or a baseline) on a GLUE/SuperGLUE task.",
        epilog=f"methods (--method) and their defaults: {methods}",
        formatter_class=_HelpFormatter,
    )
    parser.add_argument(
        "task_or_config",
        nargs="?",
        metavar="TASK | CONFIG_FILE",
        help="the task (same as --task), or a JSON/YAML file of settings (same as --config)",
    )
    parser.add_argument("--config", help="JSON or YAML file of these settings, e.g. a run's run_config.json")
    # the deepspeed launcher passes every process --local_rank (also in LOCAL_RANK, which the run reads)
    parser.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)
    for action in parser._actions:
        if action.dest in _REQUIRED:
            action.required = False  # may come positionally or from a config file; checked after parsing
    return parser


def _check_type(name: str, value: Any, expected: Any, source: str) -> None:
    kinds = tuple(t for t in (typing.get_args(expected) or (expected,)) if isinstance(t, type) and t is not type(None))
    if not kinds or (float in kinds and type(value) is int):
        return  # no plain type (Literal choices are checked in __post_init__), or an int for a float
    if isinstance(value, bool) != (bool in kinds) or not isinstance(value, kinds):
        raise RunConfigError(f"{source}: {name} = {value!r} is not a {' or '.join(k.__name__ for k in kinds)}")


def load_config_file(path: str) -> dict[str, Any]:
    """The settings of a JSON/YAML file as flat fields (``method_settings`` may be nested), type-checked."""
    file = Path(path)
    if file.suffix not in CONFIG_SUFFIXES:
        raise RunConfigError(f"--config {path}: expected a {', '.join(CONFIG_SUFFIXES)} file")
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise RunConfigError(f"--config {path}: {error}") from None
    if file.suffix == ".json":
        try:
            values = json.loads(text)
        except ValueError as error:
            raise RunConfigError(f"--config {path}: not valid JSON ({error})") from None
    else:
        import yaml

        try:
            values = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise RunConfigError(f"--config {path}: not valid YAML ({' '.join(str(error).split())})") from None
    if not isinstance(values, dict):
        raise RunConfigError(f"--config {path}: expected a mapping of settings")
    flat = flatten_run_config(values)
    hints = {**typing.get_type_hints(RunSettings), **typing.get_type_hints(MethodSettings)}
    unknown = sorted(set(flat) - set(hints))
    if unknown:
        raise RunConfigError(f"--config {path}: unknown settings {', '.join(unknown)}")
    for name, value in flat.items():
        if value is not None:
            _check_type(name, value, hints[name], f"--config {path}")
    return flat


def parse_run_config(argv: Sequence[str] | None = None, parser: argparse.ArgumentParser | None = None) -> RunConfig:
    """The :class:`RunConfig` of a command line: defaults, then the config file, then the options given."""
    parser = parser or build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    first, _ = parser.parse_known_args(argv)
    positional = first.task_or_config
    from_file = positional is not None and positional.endswith(CONFIG_SUFFIXES)
    config_file = first.config or (positional if from_file else None)
    if config_file is not None:
        parser.set_defaults(**load_config_file(config_file))
    values = vars(parser.parse_args(argv))
    values.pop("config")
    values.pop("local_rank")
    if values.pop("task_or_config") is not None and not from_file:
        values["task"] = positional
    missing = [f"--{name.replace('_', '-')}" for name in _REQUIRED if values.get(name) is None]
    if missing:
        raise RunConfigError(f"missing {' and '.join(missing)} (on the command line or in a config file)")
    run = RunSettings(**{f.name: values[f.name] for f in dataclasses.fields(RunSettings)})
    method = MethodSettings(**{f.name: values[f.name] for f in dataclasses.fields(MethodSettings)})
    return RunConfig.from_parts(run, method)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        config = parse_run_config(argv, parser)
        from .harness import run_experiment

        final = run_experiment(config)
    except KeyboardInterrupt:
        print("interrupted: start the same command again to resume from the last checkpoint", file=sys.stderr)
        return 130
    except UserInputError as error:  # the user's settings or files: one line, no usage, no traceback
        parser.exit(2, f"{parser.prog}: error: {' '.join(str(error).split())}\n")
    if final:
        best = final.get("best") or {}
        last = final.get("final") or {}
        floors = final.get("floors") or {}
        beside = ", ".join(
            f"{name.replace('_', '-')} floor {value:.1f}" for name, value in floors.items() if value is not None
        )
        print(
            f"done: {final['task']} / {final['method']} step {final['global_step']}: final score "
            f"{_fmt(last.get('eval_score'))}, best {_fmt(best.get('eval_score'))} (step {best.get('step')}); "
            f"{beside}; results in {config.output_dir}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
