"""Overhead of each prompt method against stock prompt tuning: training step time, inference latency, memory.

Every variant wraps the same frozen base model (prompt methods leave the base untouched), and the variants
are measured interleaved (A B C ... A B C ...) for ``--rounds`` rounds, so slow drifts of the machine hit
every variant alike. Time ratios are taken per round against stock prompt tuning of the same round; the table
shows their median and [min, max].

Memory on CPU: the peak resident memory reached during one training step (Linux ``VmHWM`` after resetting
it through ``/proc/self/clear_refs``) minus the resident memory just before the step, plus the adapter's
persistent training state (parameters, gradients and the two AdamW moments of every trainable tensor, and
the encoder's buffers), which the step's peak does not see because it exists before the step. The memory
ratio compares medians.

    python -m benchmarks.overhead --model tiny --rounds 5
    python -m benchmarks.overhead --model smollm2 --rounds 3 --batch-size 8 --seq-len 128
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from peft import PromptTuningConfig, PromptTuningInit, TaskType, get_peft_model

import peft_superpos
from peft_superpos import SuperPosPromptConfig, disable_dropout, make_param_groups
from peft_superpos.atomic_files import atomic_write_text
from peft_superpos.harness.methods import METHODS

REFERENCE = "prompt_tuning"


def variants(num_virtual_tokens: int) -> dict[str, Callable[[], object]]:
    """Variant name -> config factory. The reference (stock prompt tuning) comes first."""
    causal, n = TaskType.CAUSAL_LM, num_virtual_tokens
    table: dict[str, Callable[[], object]] = {
        REFERENCE: lambda: PromptTuningConfig(
            task_type=causal, num_virtual_tokens=n, prompt_tuning_init=PromptTuningInit.SAMPLE_VOCAB
        ),
    }
    for m in (16, 64, 128, 256, 512):
        table[f"superpos m={m}"] = lambda m=m: SuperPosPromptConfig(task_type=causal, num_virtual_tokens=n, m=m)
    table["superpos m=128 softmax"] = lambda: SuperPosPromptConfig(
        task_type=causal, num_virtual_tokens=n, m=128, use_softmax=True
    )
    table["residual b=128"] = lambda: peft_superpos.ResidualPromptConfig(
        task_type=causal, num_virtual_tokens=n, bottleneck_size=128
    )
    table["dept r=30"] = lambda: peft_superpos.DePTConfig(task_type=causal, num_virtual_tokens=n, r=30)
    for spec in METHODS.values():  # a prompt method added to the harness's table: one variant, its defaults
        if spec.is_prompt_method and not any(name.split()[0] == spec.name for name in table):
            table[spec.name] = lambda spec=spec: spec.peft_config(causal, num_virtual_tokens=n)
    return table


def load_base(name: str) -> torch.nn.Module:
    if name == "tiny":
        from transformers import LlamaConfig, LlamaForCausalLM

        torch.manual_seed(0)
        config = LlamaConfig(
            vocab_size=2048, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=512, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        )  # fmt: skip
        return LlamaForCausalLM(config)
    from peft_superpos.models import load_model_and_tokenizer

    model, _ = load_model_and_tokenizer(None if name == "smollm2" else name)
    return model


def memory_kib() -> tuple[int, int]:
    """(resident now, peak resident since the last reset) in KiB, from /proc/self/status."""
    status = Path("/proc/self/status").read_text()
    return tuple(int(re.search(rf"{key}:\s+(\d+)", status).group(1)) for key in ("VmRSS", "VmHWM"))


def reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")


def adapter_state_bytes(model: torch.nn.Module) -> int:
    trainable = sum(p.numel() * p.element_size() * 4 for p in model.parameters() if p.requires_grad)
    encoders = getattr(model, "prompt_encoder", torch.nn.ModuleDict())
    buffers = sum(b.numel() * b.element_size() for encoder in encoders.values() for b in encoder.buffers())
    return trainable + buffers


class Variant:
    """One PEFT model on the shared base, with its optimizer and fixed inputs."""

    def __init__(self, base, config, batch: dict[str, torch.Tensor], lr: float = 1e-3) -> None:
        self.model = get_peft_model(base, config)
        self.optimizer = torch.optim.AdamW(make_param_groups(self.model, weight_decay=1e-5), lr=lr)
        self.batch = batch
        self.trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)

    def train_step(self) -> tuple[float, int]:
        """Seconds of one forward+backward+AdamW step, and the KiB the step's peak added to resident memory."""
        self.model.train()
        before, _ = memory_kib()
        reset_peak()
        start = time.perf_counter()
        loss = self.model(**self.batch, labels=self.batch["input_ids"]).loss
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        seconds = time.perf_counter() - start
        _, peak = memory_kib()
        return seconds, peak - before

    def adapter_only(self, repeats: int = 20) -> float:
        """Median seconds of the adapter's own work in a training step, without the backbone: computing the
        prompt from its parameters, back-propagating into them and the AdamW step. Far less noisy than the
        difference of two whole steps; ``train_step / (train_step - adapter difference)`` bounds the ratio."""
        encoder = self.model.prompt_encoder["default"]
        tokens = self.model.prompt_tokens["default"].unsqueeze(0)
        adjust = getattr(encoder, "adjust_input_embeds", None)  # DePT's update of the input embeddings
        inputs_embeds = self.model.word_embeddings(self.batch["input_ids"]).detach()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            loss = encoder(tokens).float().square().sum()
            if adjust is not None:
                loss = loss + adjust(inputs_embeds, self.batch["attention_mask"]).float().square().sum()
            loss.backward()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    @torch.no_grad()
    def inference(self) -> float:
        """Seconds of one steady-state eval forward (after a warm-up forward that may build caches)."""
        self.model.eval()
        self.model(**self.batch)
        start = time.perf_counter()
        self.model(**self.batch)
        return time.perf_counter() - start


def summarise(values: list[float], reference: list[float]) -> dict[str, float]:
    ratios = [v / r for v, r in zip(values, reference, strict=True)]
    return {
        "median": statistics.median(values),
        "ratio_median": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny", help="'tiny', 'smollm2' (the embedded default) or a path/Hub id")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1, help="untimed training steps per variant first")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--num-virtual-tokens", type=int, default=10)
    parser.add_argument("--only", nargs="*", help="measure only these variants (the reference is always added)")
    parser.add_argument("--output", default="benchmarks/results", help="folder for the JSON results")
    args = parser.parse_args()

    torch.manual_seed(0)
    base = load_base(args.model)
    disable_dropout(base)  # every variant runs without backbone dropout, the reference included
    vocab = base.get_input_embeddings().num_embeddings
    batch = {
        "input_ids": torch.randint(3, vocab, (args.batch_size, args.seq_len)),
        "attention_mask": torch.ones(args.batch_size, args.seq_len, dtype=torch.long),
    }
    factories = variants(args.num_virtual_tokens)
    names = [n for n in factories if not args.only or n == REFERENCE or n in args.only]
    runs = {name: Variant(base, factories[name](), batch) for name in names}
    for _ in range(args.warmup):
        for run in runs.values():
            run.train_step()
    adapter_s = {name: run.adapter_only() for name, run in runs.items()}

    train = {name: [] for name in names}
    peak = {name: [] for name in names}
    infer = {name: [] for name in names}
    for round_index in range(args.rounds):
        for name, run in runs.items():  # A B C ... in every round
            seconds, kib = run.train_step()
            train[name].append(seconds)
            peak[name].append(kib)
        for name, run in runs.items():
            infer[name].append(run.inference())
        print(f"round {round_index + 1}/{args.rounds} done", flush=True)

    results = {
        "command": "python -m benchmarks.overhead " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in
                                                                 vars(args).items() if v is not None),
        "model": args.model,
        "torch_threads": torch.get_num_threads(),
        "variants": {},
    }  # fmt: skip
    reference_memory = [p + adapter_state_bytes(runs[REFERENCE].model) / 1024 for p in peak[REFERENCE]]
    header = (
        "| variant | trainable | train step s | train ratio | infer s | infer ratio | step peak + state MiB "
        "| memory ratio | adapter state MiB | adapter-only ms | adapter-only extra / step |\n"
        "|---|---:|---:|---|---:|---|---:|---:|---:|---:|---:|"
    )
    rows = [header]
    for name, run in runs.items():
        state_kib = adapter_state_bytes(run.model) / 1024
        memory = [p + state_kib for p in peak[name]]
        entry = {
            "trainable_parameters": run.trainable,
            "train_step_s": summarise(train[name], train[REFERENCE]),
            "inference_s": summarise(infer[name], infer[REFERENCE]),
            "adapter_only_s": adapter_s[name],
            "adapter_only_extra_over_reference_step": (adapter_s[name] - adapter_s[REFERENCE])
            / statistics.median(train[REFERENCE]),
            "memory_kib": {  # the step peak is ~0 on tiny models, so compare medians rather than per-round ratios
                "median": statistics.median(memory),
                "ratio_median": statistics.median(memory) / max(statistics.median(reference_memory), 1.0),
                "state_kib": state_kib,
            },
            "raw": {"train_s": train[name], "inference_s": infer[name], "step_peak_kib": peak[name]},
        }
        results["variants"][name] = entry
        t, i, m = entry["train_step_s"], entry["inference_s"], entry["memory_kib"]
        rows.append(
            f"| {name} | {run.trainable:,} | {t['median']:.4f} | {t['ratio_median']:.3f} "
            f"[{t['ratio_min']:.3f}, {t['ratio_max']:.3f}] | {i['median']:.4f} | {i['ratio_median']:.3f} "
            f"[{i['ratio_min']:.3f}, {i['ratio_max']:.3f}] | {m['median'] / 1024:.1f} | {m['ratio_median']:.3f} "
            f"| {state_kib / 1024:.2f} | {adapter_s[name] * 1e3:.2f} "
            f"| {entry['adapter_only_extra_over_reference_step']:+.4f} |"
        )
    table = "\n".join(rows)
    print(f"\nmodel={args.model} batch={args.batch_size}x{args.seq_len} rounds={args.rounds}\n{table}")
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", args.model)
    atomic_write_text(out / f"overhead-{name}.json", json.dumps(results, indent=2))
    atomic_write_text(out / f"overhead-{name}.md", f"`{results['command']}`\n\n{table}\n")


if __name__ == "__main__":
    main()
