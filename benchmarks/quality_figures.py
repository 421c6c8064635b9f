"""The quality report's learning curves: one PNG per (model, task) with results, and an overview of all of them."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from benchmarks.quality_numbers import QualityNumbers
from benchmarks.quality_stats import Curve, Floor
from benchmarks.quality_v2_numbers import StageA
from peft_superpos.atomic_files import atomic_write

CURVES_DIR = "curves"


def write_plots(numbers: QualityNumbers, folder: Path) -> list[Path]:
    """Every series of ``numbers.series`` (mean over seeds, the range of the seeds shaded; floors dashed), one PNG
    per (model, task) with results, plus ``overview.png``; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = []
    for model, tasks in numbers.series.items():
        for task, series in tasks.items():
            curves = {
                label + (f" ({len(s.seeds)} seeds, range shaded)" if len(s.seeds) > 1 else ""): s.curve
                for label, s in series.items()
                if s and s.curve.steps
            }
            if curves:
                panels.append((model, task, curves, numbers.floors[model][task]))

    def draw(axis: Any, model: str, task: str, curves: Mapping[str, Curve], floor: Floor) -> None:
        for label, curve in curves.items():
            (line,) = axis.plot(curve.steps, curve.scores, marker="o", markersize=3, label=label)
            if curve.low != curve.high:  # two seeds or more: their range, shaded
                axis.fill_between(curve.steps, curve.low, curve.high, color=line.get_color(), alpha=0.15)
        for name, value, style in (("majority", floor.majority, "--"), ("zero-shot", floor.zero_shot, ":")):
            if value is not None:
                axis.axhline(value, linestyle=style, color="grey", label=f"{name} floor")
        axis.set_title(f"{model} / {task}")
        axis.set_xlabel("step")
        axis.set_ylabel("score")

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for panel in panels:
        fig, axis = plt.subplots(figsize=(6, 4))
        draw(axis, *panel)
        axis.legend(fontsize=7)
        fig.tight_layout()
        written.append(save_figure(fig, folder / f"{panel[0]}-{panel[1]}.png"))
        plt.close(fig)
    if panels:
        columns, rows = min(4, len(panels)), math.ceil(len(panels) / min(4, len(panels)))
        fig, axes = plt.subplots(rows, columns, figsize=(4 * columns, 3 * rows), squeeze=False)
        for axis in axes.flat[len(panels) :]:
            axis.set_visible(False)
        for axis, panel in zip(axes.flat, panels, strict=False):
            draw(axis, *panel)
            axis.legend(fontsize=5)
        fig.tight_layout()
        written.append(save_figure(fig, folder / "overview.png"))
        plt.close(fig)
    return written


def write_step_plot(stage: StageA, path: Path) -> Path:
    """Stage A of one model (``stage.stepped``): each setting's best development score against its whole first
    step (measured) relative to the embedding RMS (log scale), the chosen learning rate circled, the majority
    floor dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = [s for s in stage.settings if any(p.first_step is not None for p in s.sweep)]
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, axis = plt.subplots(figsize=(6, 4))
    for setting in settings:
        points = [p for p in setting.sweep if p.first_step is not None]
        (line,) = axis.plot([p.first_step for p in points], [p.best for p in points], marker="o", label=setting.label)
        chosen = [p for p in points if p.lr == setting.chosen_lr]
        axis.scatter([p.first_step for p in chosen], [p.best for p in chosen], s=150, facecolors="none",
                     edgecolors=line.get_color())  # fmt: skip
    if stage.dev_majority is not None:
        axis.axhline(stage.dev_majority, linestyle="--", color="grey", label="majority floor")
    axis.set_xscale("log")
    axis.set_title(f"{stage.model} / SST-2 (development split): best score against step size")
    axis.set_xlabel("whole first step of the prompt / embedding RMS (measured)")
    axis.set_ylabel("best score")
    axis.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return path


def save_figure(fig: Any, path: Path) -> Path:
    atomic_write(path, lambda temporary: fig.savefig(temporary, dpi=90))
    return path
