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
from benchmarks.quality_figures import CURVES_DIR, write_plots
from benchmarks.quality_grid import DEFAULT_RESULTS_DIR, RunSpec
from benchmarks.quality_numbers import quality_numbers
from benchmarks.quality_render import report_json, report_markdown, report_tables
from peft_superpos.harness.run_record import atomic_write_text

REPORT_FILES = ("report.md", "report.json")
__all__ = ["CURVES_DIR", "REPORT_FILES", "build_report", "write_outputs", "write_report"]


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


def write_outputs(grid: Sequence[RunSpec], results_dir: Path, plots: bool) -> tuple[dict[str, Any], list[Path]]:
    """The report files and, for the default results folder, RESULTS.md; returns the report and the text files
    written."""
    report = write_report(grid, results_dir, plots=plots)
    paths = [results_dir / name for name in REPORT_FILES]
    if results_dir.resolve() == DEFAULT_RESULTS_DIR:
        paths.append(make_results.write_results())
    return report, paths
