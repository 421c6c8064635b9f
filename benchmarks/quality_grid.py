"""The quality suite's grid and its results on disk: what runs (:data:`GRID_V1`, one :class:`RunSpec` per run,
in order), where a finished run's small results are (``benchmarks/results/quality/<model>/<task>/<run>/``:
``final.json``, ``metrics.jsonl`` and the predictions, see ``quality_predictions.py``) and which learning rate the
lr check chose. Shared by the runner (``quality_suite.py``) and the report (``quality_report.py``)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from peft_superpos.harness.run_record import best_row, read_jsonl, read_rows

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RESULTS_DIR = Path(__file__).resolve().parent / "results" / "quality"
FAILURES_FILE = "failures.jsonl"

# ----------------------------------------------------------------------------------------------------------
# The grid: data. Order matters: the runner goes through it in order.
# ----------------------------------------------------------------------------------------------------------

#: Suite model name -> the harness's ``--model``.
MODELS: Mapping[str, str] = {"smollm2": "smollm2-135m-instruct", "minilm": "minilm", "gemma3": "gemma3"}
#: Settings every run shares (the paper's protocol: generation eval on the first <= 300 validation examples).
MAX_EVAL_SAMPLES = 300
#: Size of the development split carved from the training file for selection runs (``RunSpec.dev``), the same
#: examples for every run (the harness' ``--dev-seed`` 0).
DEV_SIZE = 300
BATCH_SIZE = 8
EVAL_STEPS = 100
#: ``lr`` of a spec that takes the best learning rate of the lr check (resolved when the runner reaches it).
FROM_LR_CHECK = "from_lr_check"
#: The paper's learning rate for SuperPos and prompt tuning; it wins ties in the lr check.
PAPER_LR = 1e-2

ZERO_SHOT, LR_CHECK, MAIN, SEED, ABLATION, MINILM = "zero-shot", "lr-check", "main", "seed", "ablation", "minilm"
#: The stages in the report's order (the run order is :func:`grid_v1`'s).
STAGES = (ZERO_SHOT, MINILM, LR_CHECK, MAIN, SEED, ABLATION)
#: Grid v2's stages (``quality_grid_v2.py``): the learning-rate sweep on the development split, extensions of a sweep
#: whose best value is at an edge, each SuperPos init at its chosen lr at a second seed on the development split, the
#: best settings confirmed on the validation split, the base-model regime, and SuperPos' m and softmax at the
#: effective step of its tuned setting.
SWEEP, EXTEND, RESEED, CONFIRM, REGIME, MATCHED = "sweep", "extend", "reseed", "confirm", "regime", "matched"
V2_STAGES = (SWEEP, EXTEND, RESEED, CONFIRM, REGIME, MATCHED)
#: ``lr`` / ``weight_init`` of a spec that takes the best setting of its model's sweep (resolved when reached).
FROM_SWEEP = "from_sweep"

SHORT_TASKS = ("sst2", "cola", "copa", "stsb")
MAIN_TASKS = (*SHORT_TASKS, "mrpc", "rte", "cb")  # short tasks first
MAIN_METHODS = ("superpos", "prompt_tuning", "residual", "lora")
TUNED_METHODS = ("superpos", "prompt_tuning")  # their lr comes from the lr check
LR_CHECK_TASKS = ("sst2", "cola")
LR_CHECK_VALUES = (3e-3, 1e-2, 3e-2)
#: SST-2 at two seeds rather than two tasks: on CoLA, COPA and STS-B every method of the main stage (LoRA too)
#: stayed at the majority floor within 400 steps, where no variant of m could show a difference.
ABLATION_TASKS = ("sst2",)
ABLATION_SEEDS = (42, 7)
ABLATION_M = (16, 64, 256)  # m=128 is the main run
MINILM_TASKS = ("sst2", "mrpc", "rte", "cola")

#: Step budgets (optimizer steps of batch 8); one budget for every method of a task. Sized from step times
#: measured on the 2-core CPU (benchmarks/results/padding-smollm2.md, grouped batches: SST-2 ~1.5 s/step,
#: CB/RTE ~3.1-3.3 s/step; a 300-example generation eval ~35 s on short tasks): short tasks ~12 min a run,
#: long tasks ~17 min, the whole grid ~12 CPU-hours. See RESULTS.template.md for the reasoning.
LR_CHECK_STEPS = 200
MAIN_STEPS: Mapping[str, int] = {"sst2": 400, "cola": 400, "copa": 400, "stsb": 400, "mrpc": 300, "rte": 300, "cb": 300}
MINILM_STEPS: Mapping[str, int] = {"sst2": 500, "mrpc": 500, "rte": 500, "cola": 500}


@dataclass(frozen=True)
class RunSpec:
    """One run of the grid. ``lr``: a number, None (the method's harness default), :data:`FROM_LR_CHECK` or
    :data:`FROM_SWEEP`. ``weight_init``: SuperPos' init of p' (None: the config's default) or :data:`FROM_SWEEP`.
    ``dev``: evaluate on the development split carved from the training file (selection runs), else on the first
    ``max_eval_samples`` validation examples (None: all). ``max_train_samples``: a seeded subset of train."""

    stage: str
    model: str
    task: str
    method: str
    seed: int = 42
    max_steps: int | None = None  # None only for eval-only runs
    eval_steps: int = EVAL_STEPS
    lr: float | str | None = None
    m: int | None = None
    softmax: bool = False
    keep_dropout: bool = False
    eval_only: bool = False
    weight_init: str | None = None
    dev: bool = False
    max_train_samples: int | None = None
    max_eval_samples: int | None = MAX_EVAL_SAMPLES

    def __post_init__(self) -> None:
        if self.stage not in (*STAGES, *V2_STAGES):
            raise ValueError(f"unknown stage {self.stage!r}; expected one of {(*STAGES, *V2_STAGES)}")
        if self.eval_only == (self.max_steps is not None):
            raise ValueError(f"{self.task}/{self.method}: give max_steps to a training run, and none to eval-only")
        if isinstance(self.lr, str) and self.lr not in (FROM_LR_CHECK, FROM_SWEEP):
            raise ValueError(f"lr must be a number, None, {FROM_LR_CHECK!r} or {FROM_SWEEP!r}, got {self.lr!r}")

    @property
    def run_name(self) -> str:
        """Folder name, unique within (model, task): e.g. ``superpos-m16-s42``, ``lrcheck-superpos-lr0.01-s42``,
        ``sweep-superpos-one_hot-lr0.01-s42``, ``superpos-tuned-n500-s7``."""
        if self.eval_only:
            return "zero-shot"
        if self.stage in V2_STAGES:
            return self._v2_run_name()
        parts = ["lrcheck"] if self.stage == LR_CHECK else []
        parts.append(self.method)
        if self.stage == LR_CHECK:
            parts.append(f"lr{self.lr:g}")
        if self.m is not None:
            parts.append(f"m{self.m}")
        if self.softmax:
            parts.append("softmax")
        if self.keep_dropout:
            parts.append("dropout")
        return "-".join([*parts, f"s{self.seed}"])

    def _v2_run_name(self) -> str:
        parts = ["sweep"] if self.stage in (SWEEP, EXTEND) else ["dev"] if self.stage == RESEED else []
        parts.append(self.method)
        if self.weight_init not in (None, FROM_SWEEP):
            parts.append(self.weight_init)
        if self.m is not None:
            parts.append(f"m{self.m}")
        if self.softmax:
            parts.append("softmax")
        if self.stage == MATCHED:
            parts.append("matched")
        elif FROM_SWEEP in (self.lr, self.weight_init):
            parts.append("tuned")
        elif self.lr is not None:
            parts.append(f"lr{self.lr:g}")
        if self.max_train_samples is not None:
            parts.append(f"n{self.max_train_samples}")
        return "-".join([*parts, f"s{self.seed}"])

    @property
    def run_id(self) -> str:
        return f"{self.model}/{self.task}/{self.run_name}"

    @property
    def series(self) -> str:
        """What the report calls this setting; the runs of one series differ only by seed."""
        if self.eval_only:
            return "zero-shot"
        label = self.method
        if self.stage == LR_CHECK:
            label += f" lr={self.lr:g}"
        if self.m is not None:
            label += f" m={self.m}"
        if self.softmax:
            label += " softmax"
        if self.stage == MINILM:
            label += ", dropout on" if self.keep_dropout else ", dropout off"
        if self.weight_init not in (None, FROM_SWEEP):
            label += f" {self.weight_init}"
        if self.stage in (SWEEP, EXTEND):
            label += f" lr={self.lr:g}"
        return label


def grid_v1() -> tuple[RunSpec, ...]:
    """Grid v1 of issue 7, in the order it runs: zero-shot, MiniLM, the lr check, the main stage on the short
    tasks, the ablation, the second seed, then the main stage on the long tasks (about 17 min a run; the
    ablation and the second seed answer their questions first)."""
    zero_shot = [RunSpec(ZERO_SHOT, "smollm2", task, "full", eval_only=True) for task in MAIN_TASKS]
    lr_check = [
        RunSpec(LR_CHECK, "smollm2", task, method, max_steps=LR_CHECK_STEPS, lr=lr)
        for task in LR_CHECK_TASKS
        for method in TUNED_METHODS
        for lr in LR_CHECK_VALUES
    ]
    main = {
        task: [RunSpec(MAIN, "smollm2", task, method, max_steps=MAIN_STEPS[task],
                       lr=FROM_LR_CHECK if method in TUNED_METHODS else None) for method in MAIN_METHODS]
        for task in MAIN_TASKS
    }  # fmt: skip
    main_short = [spec for task in SHORT_TASKS for spec in main[task]]
    main_long = [spec for task in MAIN_TASKS if task not in SHORT_TASKS for spec in main[task]]
    second_seed = [
        RunSpec(SEED, "smollm2", task, method, seed=7, max_steps=MAIN_STEPS[task], lr=FROM_LR_CHECK)
        for task in SHORT_TASKS
        for method in TUNED_METHODS
    ]
    ablations = [
        RunSpec(ABLATION, "smollm2", task, "superpos", seed=seed, max_steps=MAIN_STEPS[task], lr=FROM_LR_CHECK,
                **variant)
        for seed in ABLATION_SEEDS
        for task in ABLATION_TASKS
        for variant in [*({"m": m} for m in ABLATION_M), {"softmax": True}]
    ]  # fmt: skip
    minilm = [
        RunSpec(MINILM, "minilm", task, method, max_steps=MINILM_STEPS[task], keep_dropout=keep)
        for task in MINILM_TASKS
        for method in TUNED_METHODS
        for keep in (False, True)
    ]
    return check_grid([*zero_shot, *minilm, *lr_check, *main_short, *ablations, *second_seed, *main_long])


def check_grid(specs: Sequence[RunSpec]) -> tuple[RunSpec, ...]:
    seen: set[str] = set()
    for spec in specs:
        if spec.run_id in seen:
            raise ValueError(f"two runs of the grid share the id {spec.run_id}")
        seen.add(spec.run_id)
    return tuple(specs)


GRID_V1 = grid_v1()

# ----------------------------------------------------------------------------------------------------------
# Results on disk
# ----------------------------------------------------------------------------------------------------------


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def is_complete(spec: RunSpec, final: Mapping[str, Any]) -> bool:
    """Whether ``final.json`` shows the run at its step budget (eval-only: present)."""
    return spec.eval_only or int(final.get("global_step") or 0) >= spec.max_steps


def finished_final(spec: RunSpec, results_dir: Path) -> dict[str, Any] | None:
    """The run's ``final.json`` from the results folder when the run is finished there, else None."""
    final = read_json(results_dir / spec.run_id / "final.json")
    return final if final is not None and is_complete(spec, final) else None


def failure_counts(results_dir: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for row in read_jsonl(results_dir / FAILURES_FILE):
        counts[row["run_id"]] = counts.get(row["run_id"], 0) + 1
    return counts


@dataclass
class RunResult:
    """One finished run as the results folder holds it."""

    spec: RunSpec
    final: dict[str, Any]
    rows: list[dict[str, Any]]
    folder: Path

    @property
    def scored(self) -> list[dict[str, Any]]:
        return [r for r in self.rows if r.get("eval_score") is not None]

    @property
    def best_row(self) -> dict[str, Any] | None:
        return best_row(self.rows)

    @property
    def best(self) -> float | None:
        return self.best_row["eval_score"] if self.best_row else None

    @property
    def last(self) -> float | None:
        return self.scored[-1]["eval_score"] if self.scored else None

    @property
    def invalid_at_best(self) -> float | None:
        return self.best_row.get("eval_invalid_rate") if self.best_row else None

    @property
    def top_class_at_best(self) -> float | None:
        """Share (%) of the most frequent prediction at the best evaluation: 100 means one class for all."""
        return self.best_row.get("eval_majority_pred_share") if self.best_row else None

    @property
    def early_train_loss(self) -> float | None:
        """Mean training loss over steps 1-EVAL_STEPS (the first logged window): how fast the loss falls."""
        row = next((r for r in self.rows if int(r["step"]) == EVAL_STEPS), None)
        return row.get("train_loss") if row and not row.get("train_loss_partial") else None

    @property
    def steps_to_90(self) -> int | None:
        """First evaluated step whose score reaches 90 % of the run's best (undefined for a negative best)."""
        best = self.best
        if best is None or best < 0:
            return None
        return next(int(r["step"]) for r in self.scored if r["eval_score"] >= 0.9 * best)

    @property
    def seconds_per_step(self) -> float | None:
        rate = (self.final.get("timings") or {}).get("train_steps_per_second")
        return 1.0 / rate if rate else None

    def score_at(self, step: int) -> float | None:
        return next((r["eval_score"] for r in self.scored if int(r["step"]) == step), None)


def load_result(spec: RunSpec, results_dir: Path) -> RunResult | None:
    final = finished_final(spec, results_dir)
    if final is None:
        return None
    folder = results_dir / spec.run_id
    return RunResult(spec, final, read_rows(folder / "metrics.jsonl"), folder)


# ----------------------------------------------------------------------------------------------------------
# Learning rate from the lr check
# ----------------------------------------------------------------------------------------------------------


class LrCheckError(RuntimeError):
    """A run takes its lr from the lr check, and the lr check's results are not all there."""


def lr_check_means(model: str, method: str, grid: Sequence[RunSpec], results_dir: Path) -> dict[float, float]:
    """lr -> mean over the check tasks of each run's best score; raises :class:`LrCheckError` if any is missing."""
    checks = [s for s in grid if s.stage == LR_CHECK and s.model == model and s.method == method]
    if not checks:
        raise LrCheckError(f"the grid has no lr-check runs for {model}/{method}")
    scores: dict[float, list[float]] = {}
    missing = []
    for spec in checks:
        result = load_result(spec, results_dir)
        if result is None or result.best is None:
            missing.append(spec.run_id)
        else:
            scores.setdefault(spec.lr, []).append(result.best)
    if missing:
        raise LrCheckError(
            f"the lr check of {model}/{method} is not finished in {results_dir} (missing: {', '.join(missing)}); "
            f"run it first: python -m benchmarks.quality_suite run --only '{model}/*/lrcheck-{method}-*'"
        )
    return {lr: float(np.mean(values)) for lr, values in scores.items()}


def lr_from_check(model: str, method: str, grid: Sequence[RunSpec], results_dir: Path) -> float:
    """The lr with the highest mean best score in the lr check; ties go to the paper's :data:`PAPER_LR`."""
    means = lr_check_means(model, method, grid, results_dir)
    top = max(means.values())
    winners = [lr for lr, mean in means.items() if math.isclose(mean, top, rel_tol=0, abs_tol=1e-9)]
    return PAPER_LR if PAPER_LR in winners else winners[0]


def resolve_lr(spec: RunSpec, grid: Sequence[RunSpec], results_dir: Path) -> float | None:
    if spec.lr == FROM_LR_CHECK:
        return lr_from_check(spec.model, spec.method, grid, results_dir)
    return spec.lr
