"""The measured first AdamW step of a prompt (``benchmarks.prompt_steps`` writes it): its file, and the step of a
prompt setting at any learning rate, or the learning rate that gives a step.

The step is the root mean square of the prompt table's change over the first AdamW step, relative to the RMS of
the embeddings as the model sees them: the whole step, through every trained parameter (for SuperPos, through p'
as well as ΔE). Between the measured learning rates it is interpolated on log-log axes; outside them it is unknown.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.quality_grid import RunResult
from peft_superpos import SuperPosPromptConfig

FILE_NAME = "prompt-steps.json"


@dataclass(frozen=True)
class PromptSetting:
    """A prompt method's setting: for SuperPos its init, m and softmax (``m`` None: the default)."""

    method: str
    weight_init: str | None = None
    m: int | None = None
    softmax: bool = False

    @classmethod
    def of_row(cls, row: Mapping) -> PromptSetting:
        """The setting of a row of ``prompt-steps.json``."""
        return cls(row["method"], row["weight_init"], row["m"], row["softmax"])

    @property
    def label(self) -> str:
        """Its name in tables: ``superpos normal m=16``, ``superpos one_hot softmax``, ``prompt_tuning``."""
        parts = (self.method, self.weight_init, self.m and f"m={self.m}", self.softmax and "softmax")
        return " ".join(part for part in parts if part)


def run_setting(run: RunResult) -> PromptSetting:
    """The prompt setting a finished run trained (SuperPos' init as the run resolved it; runs that did not
    record it trained the config's default)."""
    settings = (run.final.get("config") or {}).get("method_settings") or {}
    init = None
    if run.spec.method == "superpos":
        init = settings.get("weight_init") or SuperPosPromptConfig.__dataclass_fields__["weight_init"].default.value
    return PromptSetting(run.spec.method, init, run.spec.m, run.spec.softmax)


def run_lr(run: RunResult) -> float | None:
    return (run.final.get("hyperparameters") or {}).get("lr")


class FirstSteps:
    """(model, :class:`PromptSetting`) -> the whole first step at each measured learning rate."""

    def __init__(self, rows: Iterable[Mapping]) -> None:
        self.rows = list(rows)  # as prompt_steps wrote them: the whole step ("all") and, for SuperPos, each path
        curves: dict[tuple[str, PromptSetting], dict[float, float]] = {}
        for row in self.rows:
            curves.setdefault((row["model"], PromptSetting.of_row(row)), {})[row["lr"]] = row["all"]
        self._curves = {key: (np.log(sorted(c)), np.log([c[lr] for lr in sorted(c)])) for key, c in curves.items()}

    @classmethod
    def load(cls, results_dir: Path) -> FirstSteps:
        """The measurements under ``results_dir`` (none while ``prompt_steps`` has not run)."""
        path = results_dir / FILE_NAME
        return cls(json.loads(path.read_text())["results"] if path.is_file() else [])

    def of_runs(self, runs: Iterable[RunResult]) -> float | None:
        """The mean over ``runs`` of the whole first step at each run's learning rate (None: a run's setting or
        learning rate was not measured)."""
        steps = [self.step(run.spec.model, run_setting(run), lr) if (lr := run_lr(run)) else None for run in runs]
        return None if not steps or None in steps else sum(steps) / len(steps)

    def step(self, model: str, setting: PromptSetting, lr: float) -> float | None:
        """The whole first step at ``lr`` (None: the setting or that learning rate was not measured)."""
        return self._interpolate(model, setting, lr, inverse=False)

    def lr_for(self, model: str, setting: PromptSetting, step: float) -> float | None:
        """The learning rate whose whole first step is ``step`` (None: outside what was measured)."""
        return self._interpolate(model, setting, step, inverse=True)

    def _interpolate(self, model: str, setting: PromptSetting, value: float, inverse: bool) -> float | None:
        curve = self._curves.get((model, setting))
        if curve is None:
            return None
        given, wanted = curve[::-1] if inverse else curve
        order = np.argsort(given)  # np.interp needs increasing x: steps sorted for the inverse, lrs already are
        given, wanted = given[order], wanted[order]
        x = math.log(value)
        if not given[0] - 1e-9 <= x <= given[-1] + 1e-9:
            return None
        return float(np.exp(np.interp(x, given, wanted)))
