"""Quality side by side: the same task, model, data, steps and seed for several methods, through the harness.

Each method is one harness run (``peft_superpos.harness.run_experiment``) in its own folder under
``--runs-dir``; a finished run is not trained again (the harness resumes or reuses it), so the script can be
stopped and restarted. It prints a table (score at every evaluation, best, invalid-label rate, time per step)
and writes ``compare-<task>.json``, ``compare-<task>.md`` and ``compare-<task>.png`` (learning curves).

    python benchmarks/compare_methods.py cb --data-dir ../shared/data --max-steps 60 --eval-steps 20
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from peft_superpos.harness.callbacks import read_rows  # noqa: E402
from peft_superpos.harness.methods import MethodSettings  # noqa: E402
from peft_superpos.harness.run import RunConfig, run_experiment  # noqa: E402

DEFAULT_METHODS = ("superpos", "prompt_tuning", "residual")


def _jsonable(value: object) -> object:
    return sorted(value) if isinstance(value, (set, frozenset)) else str(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("task")
    parser.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS))
    parser.add_argument("--data-dir")
    parser.add_argument("--model", help="default: the embedded SmolLM2-135M-Instruct")
    parser.add_argument("--max-steps", type=int, default=60)
    parser.add_argument("--eval-steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--eval-mode", choices=("generate", "rank"), default="generate")
    parser.add_argument("--max-eval-samples", type=int)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--keep-dropout", action="store_true")
    parser.add_argument("--output", default="benchmarks/results", help="folder for the table, JSON and plot")
    parser.add_argument("--runs-dir", default="runs/benchmarks", help="folder for the harness runs (checkpoints)")
    args = parser.parse_args()

    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    for method in args.methods:
        run_dir = Path(args.runs_dir) / f"compare-{args.task}" / method
        config = RunConfig(
            task=args.task, output_dir=str(run_dir), data_dir=args.data_dir, model=args.model, method=method,
            method_settings=MethodSettings(keep_dropout=args.keep_dropout), max_steps=args.max_steps,
            eval_steps=args.eval_steps, batch_size=args.batch_size, max_length=args.max_length,
            eval_mode=args.eval_mode, max_eval_samples=args.max_eval_samples, seed=args.seed, disable_tqdm=True,
        )  # fmt: skip
        final = run_experiment(config)
        rows = read_rows(run_dir / "metrics.jsonl")
        results[method] = {"final": final, "rows": rows}
        print(f"{method}: best {final['best'] and final['best']['eval_score']}", flush=True)

    steps = sorted({int(r["step"]) for result in results.values() for r in result["rows"]})
    header = (
        "| method | trainable | " + " | ".join(f"step {s}" for s in steps) + " | best | invalid % at best | s/step |"
    )
    lines = [header, "|---|---:|" + "---:|" * len(steps) + "---:|---:|---:|"]
    for method, result in results.items():
        by_step = {int(r["step"]): r for r in result["rows"]}
        final = result["final"]
        best = final["best"] or {}
        per_step = 1.0 / final["timings"]["train_steps_per_second"] if final["timings"]["train_steps_per_second"] else 0
        cells = [f"{by_step[s]['eval_score']:.1f}" if s in by_step else "" for s in steps]
        lines.append(
            f"| {method} | {final['trainable_parameters']:,} | " + " | ".join(cells)
            + f" | {best.get('eval_score', float('nan')):.1f} | {best.get('eval_invalid_rate', float('nan')):.1f} "
            f"| {per_step:.2f} |"
        )  # fmt: skip
    table = "\n".join(lines)
    command = (
        f"python benchmarks/compare_methods.py {args.task} --methods {' '.join(args.methods)} "
        f"--max-steps {args.max_steps} --eval-steps {args.eval_steps} --batch-size {args.batch_size} "
        f"--eval-mode {args.eval_mode} --seed {args.seed}" + (f" --data-dir {args.data_dir}" if args.data_dir else "")
        + (f" --model {args.model}" if args.model else "") + (" --keep-dropout" if args.keep_dropout else "")
    )  # fmt: skip
    print(f"\n{command}\n\n{table}")

    figure, axis = plt.subplots(figsize=(6, 4))
    for method, result in results.items():
        scored = [r for r in result["rows"] if r.get("eval_score") is not None]
        axis.plot([r["step"] for r in scored], [r["eval_score"] for r in scored], marker="o", label=method)
    axis.set_xlabel("step")
    axis.set_ylabel(f"{args.task} score ({args.eval_mode})")
    axis.legend()
    figure.tight_layout()
    figure.savefig(out / f"compare-{args.task}.png", dpi=100)
    summary = {m: {"final": r["final"], "rows": r["rows"]} for m, r in results.items()}
    (out / f"compare-{args.task}.json").write_text(
        json.dumps({"command": command, "runs": summary}, indent=2, default=_jsonable)
    )
    (out / f"compare-{args.task}.md").write_text(f"`{command}`\n\n{table}\n")


if __name__ == "__main__":
    main()
