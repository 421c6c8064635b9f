"""Command line: train and evaluate one method on one task.

    peft-superpos-train cb --data-dir ../shared/data --max-steps 40 --eval-steps 20 --output-dir runs/cb-superpos
    python -m peft_superpos.train rte --method lora --eval-mode rank --output-dir runs/rte-lora
    accelerate launch --num_processes 2 --cpu -m peft_superpos.train cb ... (same --batch-size: it is global)

Defaults are the paper's per method (see ``peft_superpos.harness.methods``). Writes ``metrics.jsonl``,
``final.json``, ``learning_curve.png`` and Trainer checkpoints into ``--output-dir``; starting the same command
again resumes from the last checkpoint.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

__all__ = ["build_parser", "main"]


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: ...)" only where it tells something: not after a help text that states its default
    itself, and not for a default of None (no value given) or a flag's False."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    from .harness.methods import METHODS

    methods_help = "; ".join(f"{s.name}: lr {s.lr:g}, wd {s.weight_decay:g}, {s.description}" for s in METHODS.values())
    parser = argparse.ArgumentParser(
        prog="peft-superpos-train",
        description="Train and evaluate SuperPos-Prompt (or a baseline) on a GLUE/SuperGLUE task.",
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("task", help="task name, e.g. cb, rte, copa, mrpc, cola, stsb, sst2 (case-insensitive)")
    parser.add_argument(
        "--data-dir",
        default=os.environ.get("PEFT_SUPERPOS_DATA_DIR"),
        help="folder with glue/<TASK>/*.tsv and superglue/<TASK>/*.jsonl (default: $PEFT_SUPERPOS_DATA_DIR; "
        "unset: the Hugging Face Hub)",
    )
    parser.add_argument(
        "--model",
        default=None,
        help="local path, Hub id, or an embedded model: smollm2 (the default, SmolLM2-135M-Instruct) or minilm "
        "(all-MiniLM-L6-v2, trained as a sequence classifier)",
    )
    parser.add_argument("--output-dir", required=True, help="run folder (resumed if it holds checkpoints)")
    parser.add_argument("--overwrite-output-dir", action="store_true", help="start afresh, deleting old results")

    method = parser.add_argument_group("method", f"defaults per method: {methods_help}")
    method.add_argument("--method", default="superpos", choices=sorted(METHODS), help="what to train")
    method.add_argument("--lr", type=float, default=None, help="learning rate (default: the method's)")
    method.add_argument("--weight-decay", type=float, default=None, help="AdamW weight decay (default: the method's)")
    method.add_argument("--num-virtual-tokens", type=_positive_int, default=None, help="prompt length (default 10)")
    method.add_argument("--m", type=_positive_int, default=None, help="SuperPos: superposed embeddings (default 128)")
    method.add_argument("--softmax", action="store_true", help="SuperPos: softmax over the weights (ablation)")
    method.add_argument("--bottleneck", type=_positive_int, default=None, help="Residual: MLP width (default 128)")
    method.add_argument("--rank", type=_positive_int, default=None, help="LoRA r / DePT r (default 8)")
    method.add_argument("--lr-lowrank", type=float, default=None, help="DePT: lr of A and B (default 1e-4)")
    method.add_argument("--lora-alpha", type=int, default=None, help="LoRA alpha (default 2*r)")
    method.add_argument(
        "--keep-dropout", action="store_true", help="keep the backbone's dropout (default: off, as in the paper)"
    )

    train = parser.add_argument_group("training")
    length = train.add_mutually_exclusive_group()
    length.add_argument("--max-steps", type=_positive_int, default=None, help="optimizer steps")
    length.add_argument("--epochs", type=float, default=None, help="epochs (when --max-steps is not given; default 1)")
    train.add_argument("--batch-size", type=_positive_int, default=8, help="global batch of one optimizer step")
    train.add_argument("--gradient-accumulation-steps", type=_positive_int, default=1)
    train.add_argument("--max-length", type=_positive_int, default=256, help="max tokens of source (+ target)")
    train.add_argument("--eval-steps", type=_positive_int, default=100, help="evaluate every k steps (and at the end)")
    train.add_argument(
        "--save-steps", type=_positive_int, default=None, help="checkpoint every k steps (default: eval)"
    )
    train.add_argument("--save-total-limit", type=_positive_int, default=2, help="checkpoints kept")
    train.add_argument("--seed", type=int, default=42)
    train.add_argument("--max-train-samples", type=_positive_int, default=None, help="random subset of train")
    train.add_argument("--disable-tqdm", action="store_true", help="no progress bars")
    train.add_argument(
        "--no-group-by-length",
        dest="group_by_length",
        action="store_false",
        help="random batches instead of length-grouped ones (more padding, slower)",
    )

    evaluation = parser.add_argument_group("evaluation")
    evaluation.add_argument(
        "--eval-mode",
        choices=("generate", "rank", "classify"),
        default=None,
        help="generate: greedy decoding parsed to a label (paper; the default for language models); rank: best "
        "label word by log-likelihood; classify: the classification head (the default for sequence classifiers)",
    )
    evaluation.add_argument(
        "--eval-only", action="store_true", help="evaluate the model (untrained adapter) once; train nothing"
    )
    evaluation.add_argument(
        "--zero-shot-floor",
        action="store_true",
        help="also evaluate the base model before training and report it beside the score",
    )
    evaluation.add_argument("--eval-batch-size", type=_positive_int, default=16)
    evaluation.add_argument("--eval-split", default="validation", help="validation (MNLI: also _mismatched)")
    evaluation.add_argument("--max-eval-samples", type=_positive_int, default=None, help="first N eval examples")
    return parser


def config_from_args(args: argparse.Namespace):
    from .harness import MethodSettings, RunConfig

    settings = MethodSettings(
        lr=args.lr,
        weight_decay=args.weight_decay,
        num_virtual_tokens=args.num_virtual_tokens,
        m=args.m,
        softmax=args.softmax,
        bottleneck=args.bottleneck,
        rank=args.rank,
        lr_lowrank=args.lr_lowrank,
        lora_alpha=args.lora_alpha,
        keep_dropout=args.keep_dropout,
    )
    return RunConfig(
        task=args.task,
        output_dir=args.output_dir,
        data_dir=args.data_dir,
        model=args.model,
        method=args.method,
        method_settings=settings,
        max_steps=args.max_steps,
        epochs=args.epochs,
        eval_steps=args.eval_steps,
        save_steps=args.save_steps,
        save_total_limit=args.save_total_limit,
        batch_size=args.batch_size,
        eval_batch_size=args.eval_batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        max_length=args.max_length,
        eval_mode=args.eval_mode,
        eval_split=args.eval_split,
        max_train_samples=args.max_train_samples,
        max_eval_samples=args.max_eval_samples,
        seed=args.seed,
        group_by_length=args.group_by_length,
        eval_only=args.eval_only,
        zero_shot_floor=args.zero_shot_floor,
        overwrite_output_dir=args.overwrite_output_dir,
        disable_tqdm=True if args.disable_tqdm else None,
    )


# Errors that come from the user's input (files, names, settings): one line, exit code 2, no traceback.
def _user_error(error: BaseException) -> str | None:
    from .harness import RunConfigError

    if isinstance(error, (RunConfigError, FileNotFoundError, ModuleNotFoundError)):
        return str(error)
    if isinstance(error, ValueError):
        text = str(error)
        markers = (
            "unknown task",
            "unknown split",
            "line ",
            "unknown method",
            ".tsv",
            ".jsonl",
            "needs peft_superpos",
            "m=",
            "empty ",
        )
        if any(marker in text for marker in markers):
            return text
    if isinstance(error, OSError) and "Hub" not in str(error):
        return str(error)
    return None


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from .data import get_task

    try:
        get_task(args.task)
    except ValueError as error:
        parser.error(str(error))
    if args.data_dir is not None and not os.path.isdir(args.data_dir):
        parser.error(f"--data-dir {args.data_dir} is not a folder")
    config = config_from_args(args)
    from .harness import run_experiment

    try:
        final = run_experiment(config)
    except KeyboardInterrupt:
        print("interrupted: start the same command again to resume from the last checkpoint", file=sys.stderr)
        return 130
    except Exception as error:
        message = _user_error(error)
        if message is None:
            raise
        parser.error(" ".join(message.split()) if "\n" not in message else message.replace("\n", " "))
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
