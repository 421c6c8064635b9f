"""The quality suite's report, built from the results folder alone (never the run folders), so it can be
regenerated from what is committed: ``python -m benchmarks.quality_suite report`` writes ``report.md``,
``report.json`` and the learning-curve PNGs there, then regenerates ``benchmarks/RESULTS.md``
(``make_results.py``). Runs that are not finished show as "—", so the report works on a partial grid.

In parts: the numbers (``quality_numbers.py``, on the statistics of ``quality_stats.py``: paired bootstrap over the
saved per-example predictions, ``quality_predictions.py``), then the text (``quality_render.py``), then the figures
(``quality_figures.py``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks import make_results
from benchmarks.quality_figures import CURVES_DIR, write_plots, write_step_plot
from benchmarks.quality_grid import DEFAULT_RESULTS_DIR, V2_STAGES, RunSpec
from benchmarks.quality_numbers import quality_numbers
from benchmarks.quality_render import report_json, report_markdown, report_tables
from benchmarks.quality_v2_numbers import quality_v2_numbers
from benchmarks.quality_v2_render import report_v2_json, report_v2_markdown, report_v2_tables
from peft_superpos.atomic_files import atomic_write_text

REPORT_FILES = ("report.md", "report.json")
REPORT_V2_FILES = ("report-v2.md", "report-v2.json")
__all__ = ["CURVES_DIR", "REPORT_FILES", "REPORT_V2_FILES", "build_report", "write_outputs", "write_report",
           "write_report_v2"]  # fmt: skip


def build_report(grid: Sequence[RunSpec], results_dir: Path) -> dict[str, Any]:
    """The content of report.json (numbers and tables), from the results folder alone (no plotting)."""
    numbers = quality_numbers(grid, results_dir)
    return report_json(numbers, report_tables(numbers))


def write_report(grid: Sequence[RunSpec], results_dir: Path, plots: bool = True) -> dict[str, Any]:
    """Write report.md, report.json (and the PNGs) into ``results_dir``; returns the content of report.json."""
    numbers = quality_numbers(grid, results_dir)
    tables = report_tables(numbers)
    report = report_json(numbers, tables)
    results_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps(report, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    atomic_write_text(results_dir / "report.json", text)
    atomic_write_text(results_dir / "report.md", report_markdown(tables))
    if plots:
        write_plots(numbers, results_dir / CURVES_DIR)
    return report


def write_report_v2(grid: Sequence[RunSpec], results_dir: Path, plots: bool = True) -> dict[str, Any]:
    """Write report-v2.md, report-v2.json (and Stage A's score-against-step PNGs) into ``results_dir``; returns the
    content of report-v2.json."""
    numbers = quality_v2_numbers(grid, results_dir)
    tables = report_v2_tables(numbers)
    report = report_v2_json(numbers, tables)
    results_dir.mkdir(parents=True, exist_ok=True)
    figures = [f"{CURVES_DIR}/v2-step-{stage.model}.png" for stage in numbers.stage_a if stage.stepped]
    if plots:
        for stage, figure in zip([s for s in numbers.stage_a if s.stepped], figures, strict=True):
            write_step_plot(stage, results_dir / figure)
    atomic_write_text(results_dir / "report-v2.json", json.dumps(report, indent=2, sort_keys=True) + "\n")
    atomic_write_text(results_dir / "report-v2.md", report_v2_markdown(tables, figures))
    return report


def write_outputs(
    grids: Sequence[Sequence[RunSpec]], results_dir: Path, plots: bool
) -> tuple[list[dict[str, Any]], list[Path]]:
    """The report files of each grid (grid v2's when it has v2 stages), then, for the results folder of a checkout
    (``<checkout>/benchmarks/results/quality``, e.g. a grid run from a worktree into the main checkout's), that
    checkout's RESULTS.md, once every report is written (it reads them all); returns the reports and the text
    files written."""
    reports, paths = [], []
    for grid in grids:
        if any(spec.stage in V2_STAGES for spec in grid):
            reports.append(write_report_v2(grid, results_dir, plots=plots))
            paths += [results_dir / name for name in REPORT_V2_FILES]
        else:
            reports.append(write_report(grid, results_dir, plots=plots))
            paths += [results_dir / name for name in REPORT_FILES]
    checkout = results_dir.resolve().parent.parent  # <checkout>/benchmarks of <checkout>/benchmarks/results/quality
    template = checkout / make_results.TEMPLATE.name
    if results_dir.resolve().parts[-3:] == DEFAULT_RESULTS_DIR.parts[-3:] and template.is_file():
        output = checkout / make_results.OUTPUT.name
        paths.append(make_results.write_results(template, checkout / make_results.RESULTS_DIR.name, output))
    return reports, paths
