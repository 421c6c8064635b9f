"""How far the first AdamW step moves a prompt token, measured on the real model, for every prompt setting and
learning rate of grid v2 (issue 19), from 1e-6 to 10.

``optim.prompt_step_size`` gives one path of SuperPos' step in closed form: through ΔE_i, prompt i moves by
``lr · Σ_j |p'_ij|`` per coordinate. AdamW also moves every p'_ij by about ``lr``, which moves prompt i by
``lr · Σ_j ±(E_j + ΔE_ij)``: a sum of m embeddings, whatever the init. This script measures both paths and the
whole step. Its first step is ``lr · sign(gradient)`` for every trained value (constant lr, no warm-up, as the
harness trains), so for each batch it computes the gradient once, takes one AdamW step (no weight decay: its share
of a first step is ``lr · wd · |value|``) with the named parameters only, and measures the root mean square of the
prompt table's change ``(n, d)`` relative to the RMS of the embeddings as the model sees them. Paths: ``all`` (what
training does), and for SuperPos ``delta`` (ΔE) and ``weights`` (p'). Each number is the mean over ``--batches``
training batches of 8 SST-2 examples (a seeded sample).

    python -m benchmarks.prompt_steps --models gemma3 smollm2 --data-dir ../shared/data

Writes ``benchmarks/results/quality/prompt-steps.json`` and ``.md`` (read by ``first_steps``): the grid v2 report
shows the measured whole step beside every run, and Stage C gives each variant the learning rate at which its
whole step is the tuned setting's.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path

import torch
from torch import nn

from benchmarks.first_steps import FILE_NAME, PromptSetting
from benchmarks.padding import label_loss
from benchmarks.quality_grid_v2 import MATCHED_VARIANTS, SWEEP_TASK, SWEEPS
from benchmarks.table_files import command_line, write_table
from peft_superpos.data import get_task
from peft_superpos.harness import MethodSettings, RunConfig
from peft_superpos.harness.features import TextToTextFeatures
from peft_superpos.harness.run_data import load_run_data
from peft_superpos.harness.run_model import build_adapter, load_base_model
from peft_superpos.optim import embedding_rms

RESULTS = Path(__file__).resolve().parent / "results" / "quality"
#: Every learning rate a grid v2 run may train at lies in this range (Stage C's are interpolated in it).
LRS = (*(float(f"{base}e{exponent}") for exponent in range(-6, 1) for base in (1, 3)), 10.0)
PATHS = {"all": None, "delta": "delta", "weights": "weights"}  # path -> the parameter name it trains (None: all)


def method_settings(setting: PromptSetting) -> MethodSettings:
    values = {"weight_init": setting.weight_init, "m": setting.m, "use_softmax": setting.softmax or None}
    return MethodSettings(**{key: value for key, value in values.items() if value is not None})


def grid_settings() -> list[PromptSetting]:
    """Every prompt setting grid v2 trains: Stage A's, and Stage C's variants of each SuperPos init."""
    stage_a = [PromptSetting(method, weight_init) for method, weight_init in SWEEPS]
    inits = [weight_init for method, weight_init in SWEEPS if method == "superpos"]
    variants = [PromptSetting("superpos", init, m, softmax) for init in inits for m, softmax in MATCHED_VARIANTS]
    return [*stage_a, *variants]


def training_batches(config: RunConfig, tokenizer, count: int, batch_size: int, seed: int) -> list[dict]:
    """``count`` batches of ``batch_size`` training examples drawn without replacement (seeded)."""
    train = load_run_data(config, get_task(config.task)).train
    rows = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[: count * batch_size].tolist()
    features = TextToTextFeatures(tokenizer, False, config.max_length)
    encoded = features.encode_dataset(train.select(rows))
    collator = features.collator()
    return [collator([encoded[i] for i in range(b * batch_size, (b + 1) * batch_size)]) for b in range(count)]


def prompt_table(model: nn.Module) -> torch.Tensor:
    """The active adapter's prompt table ``(n, d)`` in fp32, computed from the parameters now."""
    return model.prompt_encoder[model.active_adapter].embedding.weight.detach().float().clone()


def first_step(model: nn.Module, parameters: Sequence[nn.Parameter], lr: float) -> torch.Tensor:
    """The prompt table's change ``(n, d)`` from one AdamW step of ``parameters`` (their gradients set), which are
    left as they were."""
    saved = [parameter.detach().clone() for parameter in parameters]
    before = prompt_table(model)
    torch.optim.AdamW(parameters, lr=lr, weight_decay=0.0).step()
    change = prompt_table(model) - before
    with torch.no_grad():
        for parameter, value in zip(parameters, saved, strict=True):
            parameter.copy_(value)
    return change


def measure_setting(model: nn.Module, batches: Sequence[dict], lrs: Sequence[float], rms: float) -> list[dict]:
    """For each learning rate and path, the mean over ``batches`` of the first step's RMS relative to ``rms``."""
    named = {name: p for name, p in model.named_parameters() if p.requires_grad}
    paths = {
        path: [p for name, p in named.items() if part is None or name.endswith(f".{part}")]
        for path, part in PATHS.items()
    }
    steps: dict[tuple[float, str], list[float]] = {}
    for batch in batches:
        model.zero_grad(set_to_none=True)
        label_loss(model, batch).backward()
        for lr in lrs:
            for path, parameters in paths.items():
                if parameters and (path == "all" or len(parameters) < len(named)):
                    change = first_step(model, parameters, lr)
                    steps.setdefault((lr, path), []).append(float(change.pow(2).mean().sqrt()) / rms)
    by_lr: dict[float, dict] = {}
    for (lr, path), values in steps.items():
        by_lr.setdefault(lr, {"lr": lr})[path] = statistics.fmean(values)
    return list(by_lr.values())


def measure_model(model_name: str, args: argparse.Namespace) -> list[dict]:
    config = RunConfig(task=SWEEP_TASK, output_dir="unused", data_dir=args.data_dir, model=model_name,
                       method_settings=MethodSettings(), seed=args.seed)  # fmt: skip
    base = load_base_model(config)
    batches = training_batches(config, base.tokenizer, args.batches, args.batch_size, args.seed)
    rms = embedding_rms(base.model.get_input_embeddings())
    results = []
    for setting in grid_settings():
        model = build_adapter(replace(config, method=setting.method, method_settings=method_settings(setting)), base)
        model.model.eval()  # no training-time randomness (the backbone's dropout is off in training too)
        for row in measure_setting(model.model, batches, LRS, rms):
            results.append({"model": model_name, **asdict(setting), "embedding_rms": rms, **row})
        print(f"{model_name} {setting}: done", flush=True)
    return results


def table(results: list[dict], header: str) -> str:
    lines = [header, "", "| model | setting | lr | whole step / RMS | ΔE path | p' path |", "|---|---|---|---|---|---|"]
    for r in results:
        paths = [f"{r[path]:.4f}" if path in r else "-" for path in ("all", "delta", "weights")]
        lines.append(f"| {r['model']} | {PromptSetting.of_row(r).label} | {r['lr']:.3g} | {' | '.join(paths)} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["gemma3", "smollm2"])
    parser.add_argument("--data-dir", default="../shared/data")
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--output", default=str(RESULTS), help="folder for prompt-steps.json and .md")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    results = [row for model in args.models for row in measure_model(model, args)]
    command = command_line("prompt_steps", args)
    header = (
        f"The first AdamW step of a prompt token on {SWEEP_TASK}, relative to the embedding RMS (mean over "
        f"{args.batches} batches of {args.batch_size}): the whole step, and SuperPos' two paths (ΔE alone, p' "
        f"alone).\n\n`{command}`"
    )
    text = table(results, header)
    print(text)
    write_table(Path(args.output), Path(FILE_NAME).stem, command, results, text)


if __name__ == "__main__":
    main()
