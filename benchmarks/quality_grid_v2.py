"""Grid v2 (issue 19): the step sizes and starting points that let SuperPos deliver, and the regime where vanilla
prompt tuning struggles (a base model, small training sets, many epochs).

In the order it runs:

1. ``zero-shot``: the floors of Gemma 3 270M (base) on the seven shared tasks, every validation example.
2. Stage A on Gemma 3, then on SmolLM2 (so that whether a setting transfers across the two decoders, which the
   defaults depend on, is known early), SST-2 at grid v1's budget (400 steps of batch 8):
   - ``sweep``: each method setting across learning rates, evaluated on a development split of :data:`DEV_SIZE`
     examples carved from the training file (the same for every run), never on the validation examples reported;
   - ``extend``: learning rates beyond an edge, one at a time, each run only when the best so far is at that edge;
   - ``reseed``: each SuperPos init at its chosen learning rate at the second seed, on the development split (added
     once Stage A was complete, before any Stage B run: the sweep chose ``normal`` on both models by margins within
     the split's noise, and the validation examples ranked ``one_hot`` ahead on both; the default init is the one
     with the higher development score, best over the evaluations, averaged over both seeds and both models);
   - ``confirm``: the best learning rate of each setting (chosen on the development split) at two seeds,
     evaluated on all 872 validation examples: the numbers the report gives.
3. Stage B on Gemma 3 (``regime``): CB (250 examples), SST-2 and RTE subsampled to 500, for the same step budget
   per method and task (CB about 10 epochs), two seeds, every validation example; every setting of Stage A at its
   tuned learning rate (SuperPos with both inits: their development scores were within noise of each other on
   both models, and Stage A's validation examples ranked them the other way), LoRA (the paper's default lr) as the
   strong reference.
4. Stage C on Gemma 3 (``matched``): SuperPos with m = 16, 64, 256 and with the softmax variant (m=128) at the
   **step** of its tuned setting, SST-2 at Stage A's budget, two seeds, every validation example: each variant
   trains at the learning rate whose measured whole first step (``benchmarks.prompt_steps``, through p' as well as
   ΔE) equals the tuned setting's at its tuned learning rate, so that "does m matter" is about m, not about step
   size. The tuned setting's own confirmations (m=128) are the reference.

Sized from step times measured on the 2-core CPU while it was shared (Gemma 3 270M: 1.6 s per SST-2 step at batch 8,
about 0.1 s per SST-2 validation example in generation; SmolLM2: 1.2-1.5 s per step): about 18 CPU-hours for
stages A and B, about 3 more for stage C.
RESULTS.md says what was chosen and why.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from benchmarks.first_steps import FirstSteps, PromptSetting
from benchmarks.quality_grid import (
    CONFIRM,
    DEV_SIZE,
    EXTEND,
    FROM_LR_CHECK,
    FROM_SWEEP,
    MAIN_TASKS,
    MATCHED,
    REGIME,
    RESEED,
    SWEEP,
    ZERO_SHOT,
    LrCheckError,
    RunSpec,
    check_grid,
    load_result,
    resolve_lr,
)

Init = TypeVar("Init")  # a SuperPos init, or what stands for one (a report's setting)

__all__ = ["DEV_SIZE", "GRID_V2", "Settings", "grid_v2", "resolve_settings"]

SWEEP_TASK = "sst2"
SWEEP_STEPS = 400
SEEDS = (42, 7)
#: (method, SuperPos init) -> the learning rates of its sweep, and those beyond its edges, in the order they run:
#: each runs only when the best of what ran on its inner side lies at the edge next to it, so a sweep reaches three
#: steps beyond an edge when it has to. SuperPos' step through ΔE is lr x sum_j |p'_ij| (about 9 x lr with the normal
#: init at m=128, 1 x lr with one_hot), so its normal-init grid sits lower; its whole step, through p' too, is
#: measured by ``benchmarks.prompt_steps``.
SWEEPS: Mapping[tuple[str, str | None], tuple[tuple[float, ...], tuple[float, ...]]] = {
    ("superpos", "normal"): ((1e-3, 3e-3, 1e-2, 3e-2), (3e-4, 1e-1, 1e-4, 3e-1, 3e-5, 1.0)),
    ("superpos", "one_hot"): ((3e-3, 1e-2, 3e-2, 1e-1), (1e-3, 3e-1, 3e-4, 1.0, 1e-4, 3.0)),
    ("prompt_tuning", None): ((3e-3, 1e-2, 3e-2, 1e-1), (1e-3, 3e-1, 3e-4, 1.0, 1e-4, 3.0)),
    ("residual", None): ((3e-3, 3e-2, 3e-1), (3e-4, 1.0, 3e-5, 3.0, 3e-6, 10.0)),
}
#: Stage B: task -> training examples (None: the whole training file).
REGIME_TASKS: Mapping[str, int | None] = {"cb": None, "sst2": 500, "rte": 500}
REGIME_STEPS = 300
REGIME_EVAL_STEPS = 100
#: Stage B: (method, SuperPos init), every Stage A setting and LoRA.
REGIME_SETTINGS = (*SWEEPS, ("lora", None))
#: Stage C: SuperPos' variants at the effective step of its tuned setting (m=128, no softmax), as (m, softmax).
MATCHED_VARIANTS = ((16, False), (64, False), (256, False), (None, True))


def _series(model: str, method: str, weight_init: str | None) -> list[RunSpec]:
    """The sweep of one setting: its learning rates, then those beyond its edges (each run only if needed)."""
    lrs, beyond = SWEEPS[(method, weight_init)]
    common = dict(model=model, task=SWEEP_TASK, method=method, max_steps=SWEEP_STEPS, weight_init=weight_init, dev=True)
    return [
        *(RunSpec(SWEEP, lr=lr, **common) for lr in lrs),
        *(RunSpec(EXTEND, lr=lr, **common) for lr in beyond),
    ]


def _stage_a(model: str) -> list[RunSpec]:
    sweeps = [spec for method, init in SWEEPS for spec in _series(model, method, init)]
    reseed = [
        RunSpec(RESEED, model, SWEEP_TASK, method, seed=SEEDS[1], max_steps=SWEEP_STEPS, lr=FROM_SWEEP,
                weight_init=init, dev=True)
        for method, init in SWEEPS
        if method == "superpos"
    ]  # fmt: skip
    confirm = [
        RunSpec(CONFIRM, model, SWEEP_TASK, method, seed=seed, max_steps=SWEEP_STEPS, lr=FROM_SWEEP,
                weight_init=init, max_eval_samples=None)
        for method, init in SWEEPS
        for seed in SEEDS
    ]  # fmt: skip
    return [*sweeps, *reseed, *confirm]


def _stage_b(model: str) -> list[RunSpec]:
    return [
        RunSpec(REGIME, model, task, method, seed=seed, max_steps=REGIME_STEPS, eval_steps=REGIME_EVAL_STEPS,
                lr=None if method == "lora" else FROM_SWEEP, weight_init=init, max_train_samples=samples,
                max_eval_samples=None)
        for task, samples in REGIME_TASKS.items()
        for method, init in REGIME_SETTINGS
        for seed in SEEDS
    ]  # fmt: skip


def _stage_c(model: str) -> list[RunSpec]:
    return [
        RunSpec(MATCHED, model, SWEEP_TASK, "superpos", seed=seed, max_steps=SWEEP_STEPS, lr=FROM_SWEEP, m=m,
                softmax=softmax, weight_init=FROM_SWEEP, max_eval_samples=None)
        for m, softmax in MATCHED_VARIANTS
        for seed in SEEDS
    ]  # fmt: skip


def grid_v2() -> tuple[RunSpec, ...]:
    """Grid v2 in the order it runs (see the module docstring)."""
    zero_shot = [
        RunSpec(ZERO_SHOT, "gemma3", task, "full", eval_only=True, max_eval_samples=None) for task in MAIN_TASKS
    ]
    return check_grid([*zero_shot, *_stage_a("gemma3"), *_stage_a("smollm2"), *_stage_b("gemma3"), *_stage_c("gemma3")])


GRID_V2 = grid_v2()


@dataclass(frozen=True)
class Settings:
    """What the runner passes to the harness for one spec, once its lazy settings are resolved."""

    lr: float | None
    weight_init: str | None


def sweep_scores(spec: RunSpec, weight_init: str | None, grid: Sequence[RunSpec], results_dir: Path) -> dict:
    """lr -> best development score of the finished sweep runs (extensions included) of ``spec``'s model and
    method at ``weight_init``; raises :class:`LrCheckError` while a sweep run (not a skipped extension) is
    missing."""
    setting = (spec.model, spec.method, weight_init)
    scores: dict[float, float] = {}
    missing = []
    for run in grid:
        if run.stage not in (SWEEP, EXTEND) or (run.model, run.method, run.weight_init) != setting:
            continue
        result = load_result(run, results_dir)
        if result is not None and result.best is not None:
            scores[run.lr] = result.best
        elif run.stage == SWEEP:
            missing.append(run.run_id)
    if missing:
        raise LrCheckError(f"the sweep of {spec.model}/{spec.method} {weight_init or ''} is not finished: {missing}")
    return scores


def best_lr(scores: Mapping[float, float]) -> float:
    """The learning rate with the best score (ties: the smaller step)."""
    top = max(scores.values())
    return min(lr for lr, score in scores.items() if math.isclose(score, top, rel_tol=0, abs_tol=1e-9))


def better_init(best_by_init: Mapping[Init, float]) -> Init:
    """The SuperPos init whose sweep reached the higher development score (ties: the first in :data:`SWEEPS`): the
    one Stage C trains with."""
    return max(best_by_init, key=lambda init: best_by_init[init])


def extension_needed(spec: RunSpec, grid: Sequence[RunSpec], results_dir: Path) -> bool:
    """Whether an ``extend`` spec's learning rate continues the sweep past the edge where its best value lies: the
    best of the finished runs on its inner side (every learning rate between it and the sweep, and the sweep's) is
    the one next to it."""
    setting = (spec.model, spec.method, spec.weight_init)
    below = spec.lr < min(
        run.lr for run in grid if run.stage == SWEEP and (run.model, run.method, run.weight_init) == setting
    )
    scores = sweep_scores(spec, spec.weight_init, grid, results_dir)
    inner = {lr: score for lr, score in scores.items() if (lr > spec.lr if below else lr < spec.lr)}
    return best_lr(inner) == (min(inner) if below else max(inner))


def matched_lr(spec: RunSpec, weight_init: str, tuned_lr: float, results_dir: Path) -> float:
    """The learning rate at which a Stage C variant's whole first step (as measured, ``first_steps``) equals that of
    the tuned setting (m=128, no softmax) at ``tuned_lr``; raises :class:`LrCheckError` while it is not measured."""
    steps = FirstSteps.load(results_dir)
    tuned = PromptSetting("superpos", weight_init)
    variant = PromptSetting("superpos", weight_init, spec.m, spec.softmax)
    target = steps.step(spec.model, tuned, tuned_lr)
    lr = steps.lr_for(spec.model, variant, target) if target else None
    if lr is None:
        raise LrCheckError(
            f"the first steps of {spec.model} superpos {weight_init} (m={spec.m or 128}, softmax={spec.softmax}) at "
            f"lr {tuned_lr:g} are not measured: run python -m benchmarks.prompt_steps --models {spec.model}"
        )
    return lr


def resolve_settings(spec: RunSpec, grid: Sequence[RunSpec], results_dir: Path) -> Settings | None:
    """The learning rate and SuperPos init the harness gets for ``spec`` (from the lr check or the sweep where the
    spec says so); None for an extension that is not needed. Raises :class:`LrCheckError` while what a setting
    depends on is not finished."""
    if spec.stage == EXTEND and not extension_needed(spec, grid, results_dir):
        return None
    weight_init = spec.weight_init
    if weight_init == FROM_SWEEP:  # the SuperPos init whose sweep reached the higher development score
        inits = [init for method, init in SWEEPS if method == spec.method]
        weight_init = better_init({init: max(sweep_scores(spec, init, grid, results_dir).values()) for init in inits})
    if spec.lr == FROM_SWEEP:
        lr = best_lr(sweep_scores(spec, weight_init, grid, results_dir))
        if spec.stage == MATCHED:
            lr = matched_lr(spec, weight_init, lr, results_dir)
        return Settings(lr, weight_init)
    if spec.lr == FROM_LR_CHECK:
        return Settings(resolve_lr(spec, grid, results_dir), weight_init)
    return Settings(spec.lr, weight_init)
