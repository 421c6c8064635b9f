"""What a model costs in the harness: non-padding tokens per second and peak memory of training and of both
evaluation modes, at batch 8, one fresh process per (task, phase) so that each peak is its own.

Phases: ``load`` (the model plus a SuperPos adapter, nothing run: the baseline), ``train`` (``--steps``
length-grouped SuperPos steps after one warm-up step, the harness's loss on the label positions only),
``generate`` and ``rank`` (the first ``--eval-examples`` validation examples, batch 16). Training and both
evaluation modes run the LM head only on the positions they need (``logits_to_keep``, as positions:
``features.last_positions``), which matters for Gemma 3's 262k-row vocabulary. ``train, int keep`` and
``generate, int keep`` repeat a phase with ``logits_to_keep`` passed as the int K, as the harness did before: the
LM head then gets a strided slice and torch broadcasts its weight into a batched product.

    python -m benchmarks.model_cost --model gemma3 --tasks sst2 cb --data-dir ../shared/data

Writes ``benchmarks/results/cost-<model>.json`` and ``.md``. Time it on a quiet machine (no grid, no tests).
"""

from __future__ import annotations

import argparse
import resource
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import torch

from benchmarks.table_files import command_line, write_table

INT_KEEP = ", int keep"
PHASES = ("load", "train", "train" + INT_KEEP, "generate", "generate" + INT_KEEP, "rank")
RESULTS = Path(__file__).resolve().parent / "results"


def _int_logits_to_keep(module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """Forward pre-hook: the harness's positions ``-K..-1`` passed as the int ``K`` instead."""
    kwargs["logits_to_keep"] = len(kwargs["logits_to_keep"])
    return args, kwargs


def measure(task_name: str, phase: str, args: argparse.Namespace) -> dict:
    """One phase in this (fresh) process: tokens, seconds and the process's peak resident memory."""
    from benchmarks.padding import _step
    from peft_superpos.data import first_examples, get_task
    from peft_superpos.harness import MethodSettings, RunConfig
    from peft_superpos.harness.evaluation import evaluate
    from peft_superpos.harness.features import TextToTextFeatures
    from peft_superpos.harness.run_data import load_run_data
    from peft_superpos.harness.run_model import build_adapter, load_base_model
    from peft_superpos.harness.sampling import LengthGroupedSampler

    torch.manual_seed(args.seed)
    task = get_task(task_name)
    config = RunConfig(task=task_name, output_dir="unused", data_dir=args.data_dir, model=args.model,
                       method_settings=MethodSettings(), seed=args.seed)  # fmt: skip
    data = load_run_data(config, task)
    train, validation = data.train, data.evaluation
    adapter = build_adapter(config, load_base_model(config))
    model = adapter.model
    features = TextToTextFeatures(adapter.tokenizer, False, config.max_length)
    tokens, seconds = 0, 0.0
    if phase.endswith(INT_KEEP):
        adapter.base_model.register_forward_pre_hook(_int_logits_to_keep, with_kwargs=True)
    kind = phase.removesuffix(INT_KEEP)
    if kind == "train":
        encoded = features.encode_dataset(train.select(range(min(len(train), 64 * args.batch_size))))
        order = list(LengthGroupedSampler([len(ids) for ids in encoded["input_ids"]], args.batch_size, seed=args.seed))
        collator = features.collator()
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
        model.train()
        for step in range(1 + args.steps):
            batch = collator([encoded[i] for i in order[step * args.batch_size : (step + 1) * args.batch_size]])
            start = time.perf_counter()
            _step(model, optimizer, batch)
            if step:  # the first step warms up
                seconds += time.perf_counter() - start
                tokens += int(batch["attention_mask"].sum())
    elif kind in ("generate", "rank"):
        examples = first_examples(validation, args.eval_examples)
        result = evaluate(model, features, task, examples, mode=kind, batch_size=16)
        tokens, seconds = result.metrics["tokens"], result.metrics["eval_time_s"]
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"task": task_name, "phase": phase, "tokens": tokens, "seconds": seconds, "peak_rss_mib": peak_mib}


def run_in_fresh_process(task: str, phase: str, args: argparse.Namespace) -> dict:
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        return pool.submit(measure, task, phase, args).result()


def table(results: list[dict], header: str) -> str:
    lines = [
        header,
        "",
        "| task | phase | non-padding tokens/s | seconds | peak memory (MiB) |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        rate = f"{r['tokens'] / r['seconds']:.0f}" if r["seconds"] else "-"
        lines.append(f"| {r['task']} | {r['phase']} | {rate} | {r['seconds']:.1f} | {r['peak_rss_mib']:.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="gemma3", help="an embedded model or a local folder")
    parser.add_argument("--tasks", nargs="+", default=["sst2", "cb"])
    parser.add_argument("--data-dir", default="../shared/data")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10, help="timed training steps")
    parser.add_argument("--eval-examples", type=int, default=96)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--output", default=str(RESULTS), help="folder for cost-<model>.json and .md")
    args = parser.parse_args()
    results = [run_in_fresh_process(task, phase, args) for task in args.tasks for phase in PHASES]
    command = command_line("model_cost", args)
    header = (
        f"Cost of {args.model} in the harness: SuperPos m=128 n=10, training batch {args.batch_size} "
        f"({args.steps} length-grouped steps after one warm-up), evaluation batch 16 on the first "
        f"{args.eval_examples} validation examples, {torch.get_num_threads()} threads; peak memory is the "
        f"process's maximum resident set, one process per row.\n\n`{command}`"
    )
    text = table(results, header)
    print(text)
    write_table(Path(args.output), f"cost-{Path(args.model).name}", command, results, text)


if __name__ == "__main__":
    main()
