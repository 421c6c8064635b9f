"""Test helpers of the quality suite (benchmarks/quality_*.py): hand-made results as the harness leaves them in a run
folder and the suite copies them into the results folder (``metrics.jsonl``, ``final.json``, per-example
predictions), finished lr-check runs, and a fake harness that the runner starts instead of the real one."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.first_steps import FILE_NAME
from benchmarks.quality_grid import LR_CHECK, LR_CHECK_VALUES, RunSpec
from peft_superpos.data import get_task
from peft_superpos.harness import run_record


def write_run(
    folder: Path,
    scores: dict[int, float],
    invalid: float = 0.0,
    top_class: float = 50.0,
    losses: dict[int, float] | None = None,
    final_extra: dict | None = None,
) -> None:
    """A finished run as the harness leaves it: metrics.jsonl rows (train loss at the steps of ``losses``) and
    final.json at the last step."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = [
        {"step": step, "eval_score": score, "eval_invalid_rate": invalid, "eval_majority_pred_share": top_class}
        | ({"train_loss": losses[step]} if step in (losses or {}) else {})
        for step, score in scores.items()
    ]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    final = {"global_step": max(scores), "timings": {"train_steps_per_second": 0.5}, **(final_extra or {})}
    (folder / "final.json").write_text(json.dumps(final))


def write_predictions(
    folder: Path, step: int, task: str, golds: list[int | float], preds: list[int | float | None]
) -> None:
    """The per-example records of one evaluation as the harness writes them (label words; invalid: raw text)."""
    words = get_task(task).target_for
    records = [
        {"id": i, "gold": words(g), "pred": "invalid", "raw": ""} if p is None
        else {"id": i, "gold": words(g), "pred": words(p)}
        for i, (g, p) in enumerate(zip(golds, preds, strict=True))
    ]  # fmt: skip
    run_record.write_predictions(folder, step, records)


def lr_check_grid(model: str = "smollm2") -> list[RunSpec]:
    """The lr check of SuperPos on two tasks at the grid's three learning rates."""
    return [
        RunSpec(LR_CHECK, model, task, "superpos", max_steps=300, lr=lr)
        for task in ("sst2", "cola")
        for lr in LR_CHECK_VALUES
    ]


def write_lr_check(results: Path, best: dict[tuple[str, float], float]) -> None:
    """Finished lr-check runs whose best scores are ``best[task, lr]`` (at step 200)."""
    for spec in lr_check_grid():
        write_run(results / spec.run_id, {100: 0.0, 200: best[spec.task, spec.lr], 300: 0.0})


def option(command: list[str], flag: str) -> str | None:
    """The value of ``flag`` in a command line."""
    return command[command.index(flag) + 1] if flag in command else None


class FakeHarness:
    """Stands in for the harness: per run id ``ok`` (writes a finished run with the predictions of its first
    evaluation), ``fail`` (exit 1) or ``kill``
    (leaves a checkpoint and half the rows, exit -9). Records every command."""

    def __init__(self, behaviour: dict[str, str] | None = None) -> None:
        self.behaviour = behaviour or {}
        self.commands: list[list[str]] = []

    def __call__(self, command, log_path: Path) -> int:
        command = list(command)
        self.commands.append(command)
        run_dir = Path(option(command, "--output-dir"))
        run_id = "/".join(run_dir.parts[-3:])
        steps = int(option(command, "--max-steps") or 0)
        what = self.behaviour.get(run_id, "ok")
        log_path.write_text(f"log of {run_id}\n" + ("Traceback: boom\n" if what == "fail" else ""))
        if what == "fail":
            return 1
        if what == "kill":
            (run_dir / "checkpoint-100").mkdir(parents=True, exist_ok=True)
            (run_dir / "metrics.jsonl").write_text(json.dumps({"step": 100, "eval_score": 10.0}) + "\n")
            return -9
        write_run(run_dir, {step: 10.0 + step / 100 for step in range(100, steps + 1, 100)} or {0: 5.0})
        run_record.write_predictions(run_dir, 100, [{"id": 0, "gold": "entailment", "pred": "entailment"}])
        return 0


def write_first_steps(results: Path, per_lr: dict[tuple, float]) -> None:
    """A ``prompt-steps.json`` where each (model, method, init, m, softmax) takes a whole first step of ``factor``
    x lr at every lr from 1e-4 to 1 (what ``benchmarks.prompt_steps`` measures)."""
    keys = ("model", "method", "weight_init", "m", "softmax")
    rows = [{**dict(zip(keys, setting, strict=True)), "lr": lr, "all": factor * lr}
            for setting, factor in per_lr.items() for lr in (1e-4, 1e-3, 1e-2, 1e-1, 1.0)]  # fmt: skip
    results.mkdir(parents=True, exist_ok=True)
    (results / FILE_NAME).write_text(json.dumps({"command": "", "results": rows}))
