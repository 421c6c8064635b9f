"""Padding and speed: random batches against length-grouped batches, side by side on the same model.

For each task, the training set is tokenised as the harness does it (SmolLM2 by default, decoder layout). Over
one whole epoch in each order (a seeded random permutation, and the harness's ``LengthGroupedSampler``) it counts
real and padded tokens: that part is exact and takes no timing. Then it times training steps (forward,
backward, AdamW step of a SuperPos adapter, the harness's loss on the last K positions), interleaving the
two orders batch for batch (random, grouped, random, grouped, ...) so that machine noise hits both alike, and
reports the seconds per step and the real (non-padding) tokens per second of each, with their ratio.

    python -m benchmarks.padding --tasks cb rte sst2 --steps 12 --data-dir ../shared/data

Writes ``benchmarks/results/padding-<model>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from benchmarks.table_files import command_line, write_table
from peft_superpos.data import get_task
from peft_superpos.harness import MethodSettings, RunConfig
from peft_superpos.harness.features import IGNORE_INDEX, TextToTextFeatures, label_logits
from peft_superpos.harness.run_data import load_run_data
from peft_superpos.harness.run_model import build_adapter, load_base_model
from peft_superpos.harness.sampling import LengthGroupedSampler, padding_fraction

RESULTS = Path(__file__).resolve().parent / "results"


def label_loss(model, batch) -> torch.Tensor:
    """The harness's training loss of a decoder batch: cross-entropy on the label positions only."""
    _, logits, targets = label_logits(model, batch, is_encoder_decoder=False)
    return torch.nn.functional.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX
    )


def _step(model, optimizer, batch) -> None:
    label_loss(model, batch).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def measure(task: str, args: argparse.Namespace) -> dict:
    config = RunConfig(
        task=task,
        output_dir="unused",
        data_dir=args.data_dir,
        model=args.model,
        method_settings=MethodSettings(),
        max_length=args.max_length,
        seed=args.seed,
    )
    train = load_run_data(config, get_task(task)).train
    adapter = build_adapter(config, load_base_model(config))
    model, tokenizer = adapter.model, adapter.tokenizer
    encoder = TextToTextFeatures(tokenizer, False, args.max_length)
    features = encoder.encode_dataset(train)
    lengths = [len(ids) for ids in features["input_ids"]]
    random_order = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(args.seed)).tolist()
    grouped_order = list(LengthGroupedSampler(lengths, args.batch_size, seed=args.seed))
    orders = {"random": random_order, "grouped": grouped_order}
    result: dict = {"task": task, "examples": len(lengths), "batch_size": args.batch_size}
    for name, order in orders.items():
        real = sum(lengths)
        fraction = padding_fraction(lengths, args.batch_size, order)
        result[f"{name}_padding_fraction"] = fraction
        result[f"{name}_padded_tokens"] = round(real / (1 - fraction))
    result["padded_tokens_ratio"] = result["random_padded_tokens"] / result["grouped_padded_tokens"]

    collator = encoder.collator()
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    times: dict[str, list[float]] = {name: [] for name in orders}
    tokens: dict[str, int] = dict.fromkeys(orders, 0)
    for step in range(args.warmup + args.steps):
        for name, order in orders.items():
            rows = order[step * args.batch_size : (step + 1) * args.batch_size]
            batch = collator([features[i] for i in rows])
            start = time.perf_counter()
            _step(model, optimizer, batch)
            elapsed = time.perf_counter() - start
            if step >= args.warmup:
                times[name].append(elapsed)
                tokens[name] += int(batch["attention_mask"].sum())
    for name in orders:
        result[f"{name}_s_per_step"] = statistics.median(times[name])
        result[f"{name}_tokens_per_s"] = tokens[name] / sum(times[name])
    ratios = [r / g for r, g in zip(times["random"], times["grouped"], strict=True)]
    result["step_time_ratio_median"] = statistics.median(ratios)
    result["step_time_ratio_range"] = [min(ratios), max(ratios)]
    result["tokens_per_s_ratio"] = result["grouped_tokens_per_s"] / result["random_tokens_per_s"]
    return result


def table(results: list[dict], header: str) -> str:
    lines = [
        header,
        "",
        "| task | padding random | padding grouped | padded tokens random/grouped | s/step random | s/step grouped "
        "| step time ratio median [min, max] | real tokens/s random | real tokens/s grouped |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        low, high = r["step_time_ratio_range"]
        lines.append(
            f"| {r['task']} | {100 * r['random_padding_fraction']:.1f} % | {100 * r['grouped_padding_fraction']:.1f} % "
            f"| {r['padded_tokens_ratio']:.2f}x | {r['random_s_per_step']:.2f} | {r['grouped_s_per_step']:.2f} "
            f"| {r['step_time_ratio_median']:.2f}x [{low:.2f}, {high:.2f}] | {r['random_tokens_per_s']:.0f} "
            f"| {r['grouped_tokens_per_s']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=["cb", "rte", "sst2"])
    parser.add_argument("--data-dir", default="../shared/data")
    parser.add_argument("--model", default=None, help="default: the embedded SmolLM2-135M-Instruct")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--steps", type=int, default=12, help="timed steps per order and task")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--output", default=str(RESULTS), help="folder for padding-<model>.json and .md")
    args = parser.parse_args()
    results = [measure(task, args) for task in args.tasks]
    name = f"padding-{Path(args.model).name if args.model else 'smollm2'}"
    command = command_line("padding", args)
    header = (
        f"Random vs length-grouped training batches; model {args.model or 'SmolLM2-135M-Instruct (embedded)'}, "
        f"SuperPos m=128 n=10, batch {args.batch_size}, max length {args.max_length}, seed {args.seed}; padding "
        f"over one whole epoch, timing over {args.steps} interleaved steps per order on {torch.get_num_threads()} "
        f"threads.\n\n`{command}`"
    )
    text = table(results, header)
    print(text)
    write_table(Path(args.output), name, command, results, text)


if __name__ == "__main__":
    main()
