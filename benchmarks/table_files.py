"""The command line and the result files of a benchmark that prints one table: ``<name>.json`` (the command and
the numbers) and ``<name>.md`` (the table), written atomically."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from peft_superpos.atomic_files import atomic_write_text


def command_line(module: str, args: argparse.Namespace, skip: tuple[str, ...] = ("output",)) -> str:
    """``python -m benchmarks.<module>`` with every given option of ``args`` (lists space-separated)."""
    options = " ".join(
        f"--{key.replace('_', '-')} {' '.join(map(str, value)) if isinstance(value, list) else value}"
        for key, value in vars(args).items()
        if value is not None and key not in skip
    )
    return f"python -m benchmarks.{module} {options}"


def write_table(folder: Path, name: str, command: str, results: list[dict], text: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / f"{name}.json", json.dumps({"command": command, "results": results}, indent=2) + "\n")
    atomic_write_text(folder / f"{name}.md", text)
