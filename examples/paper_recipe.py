"""The SuperPos-Prompt paper's recipe through the harness: T5v1.1-LM-adapt, 10 prompt tokens superposing
m=128 vocabulary embeddings, AdamW lr 0.01, weight decay 1e-5, constant lr, no dropout, greedy-generation
evaluation. Needs the Hugging Face Hub (model and, without --data-dir, data).

    python examples/paper_recipe.py --task rte --output-dir runs/rte-t5-superpos
    python examples/paper_recipe.py --model PATH --data-dir DATA --max-steps 2   # any local seq2seq model

The same run from the command line:

    peft-superpos-train rte --model google/t5-base-lm-adapt --method superpos --num-virtual-tokens 10 --m 128 \
        --lr 0.01 --weight-decay 1e-5 --batch-size 32 --max-steps 5000 --eval-steps 500 --output-dir runs/rte
"""

import argparse
import json
import os

from peft_superpos.harness import MethodSettings, RunConfig, run_experiment


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=os.environ.get("PEFT_SUPERPOS_MODEL", "google/t5-base-lm-adapt"))
    parser.add_argument("--task", default="rte")
    parser.add_argument("--data-dir", default=os.environ.get("PEFT_SUPERPOS_DATA_DIR"))
    parser.add_argument("--output-dir", default="runs/paper-recipe")
    parser.add_argument("--max-steps", type=int, default=5000)
    parser.add_argument("--eval-steps", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-eval-samples", type=int, default=None)
    args = parser.parse_args()

    config = RunConfig(
        task=args.task,
        model=args.model,
        data_dir=args.data_dir,
        output_dir=args.output_dir,
        method="superpos",
        method_settings=MethodSettings(num_virtual_tokens=10, m=128, lr=0.01, weight_decay=1e-5, keep_dropout=False),
        max_steps=args.max_steps,
        eval_steps=args.eval_steps,
        batch_size=args.batch_size,
        max_length=256,
        eval_mode="generate",
        max_eval_samples=args.max_eval_samples,
        disable_tqdm=None,
    )
    final = run_experiment(config)
    if final:
        print(json.dumps({"best": final["best"], "final": final["final"]}, indent=2))


if __name__ == "__main__":
    main()
