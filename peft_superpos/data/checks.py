"""Checks of an official data file before it is read: every line UTF-8 and, for ``.jsonl``, no null field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["check_data_file"]


def _null_field(value: Any, where: str = "") -> str | None:
    """The path of the first JSON null inside ``value`` (e.g. ``premise`` or ``passage.questions[0]``)."""
    if value is None:
        return where or "the row"
    if isinstance(value, dict):
        items = ((f"{where}.{k}" if where else str(k), v) for k, v in value.items())
    elif isinstance(value, list):
        items = ((f"{where}[{i}]", v) for i, v in enumerate(value))
    else:
        return None
    return next((found for key, v in items if (found := _null_field(v, key)) is not None), None)


def check_data_file(path: Path) -> None:
    """Raise ``ValueError`` naming the file and line of the first line that is not UTF-8, or (``.jsonl``) of
    the first row with a null field (which would otherwise be trained on as the text "None")."""
    with path.open("rb") as handle:
        for lineno, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise ValueError(
                    f"{path}, line {lineno}: not valid UTF-8 ({error.reason} at byte {error.start})"
                ) from None
            if path.suffix != ".jsonl" or not line.strip():
                continue
            try:
                null = _null_field(json.loads(line))
            except ValueError:
                continue  # the loader names malformed JSON itself
            if null is not None:
                raise ValueError(f"{path}, line {lineno}: field {null!r} is null; give it a value or drop the row")
