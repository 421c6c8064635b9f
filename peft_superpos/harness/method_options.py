"""Method settings of the command line: each an :class:`Option` named after the peft config field it sets, declared
with its method in :mod:`.methods`; :func:`settings_class` turns them into the ``MethodSettings`` dataclass that
``transformers.HfArgumentParser`` reads and ``run_config.json`` records.

Older ``run_config.json`` files and command lines used other names for four settings (:data:`RENAMED`): they
are still read (:func:`with_current_names`, which also drops :data:`DROPPED`) and still accepted on the command
line (as aliases).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from .errors import RunConfigError

__all__ = ["RENAMED", "Option", "settings_class", "with_current_names"]

RENAMED: Mapping[str, str] = MappingProxyType(
    {"softmax": "use_softmax", "bottleneck": "bottleneck_size", "rank": "r", "lr_lowrank": "lora_lr"}
)
"""Old setting name -> the config field it is named after now (the one place that knows the old names)."""
DROPPED = ("seed", "max_length")
"""Settings that old ``run_config.json`` files also kept under ``method_settings`` (the run's own values of the
same name always replaced them)."""


@dataclass(frozen=True)
class Option:
    """One method setting: ``--<name>`` sets the config field ``name`` (None: the method's default)."""

    name: str
    type: Any
    help: str
    default: Any = None
    check: Callable[[Any], bool] | None = None
    expected: str = ""  # what ``check`` accepts, for the error message

    def validate(self, value: Any) -> None:
        if value is not None and self.check is not None and not self.check(value):
            raise RunConfigError(f"--{self.name.replace('_', '-')} {value}: must be {self.expected}")


def positive(name: str, type_: Any, help_text: str) -> Option:
    """An optional setting that must be greater than zero."""
    return Option(name, type_ | None, help_text, check=lambda value: value > 0, expected="positive")


def with_current_names(settings: Mapping[str, Any], drop: Iterable[str] = DROPPED) -> dict[str, Any]:
    """``settings`` (e.g. the ``method_settings`` of a ``run_config.json``) with old names replaced (:data:`RENAMED`)
    and the ``drop`` ones left out."""
    drop = set(drop)
    current = {RENAMED.get(name, name): value for name, value in settings.items() if name not in drop}
    clash = sorted(old for old, new in RENAMED.items() if old in settings and new in settings)
    if clash:
        raise RunConfigError(f"{', '.join(f'{old} and {RENAMED[old]}' for old in clash)} are the same setting")
    return current


def settings_class(options: Iterable[tuple[Option, str]]) -> type:
    """The ``MethodSettings`` dataclass of ``options``, given as ``(option, who uses it)``, in order; an option
    listed several times (shared by several methods) is one field, its help naming every user."""
    users: dict[str, list[str]] = {}
    declared: dict[str, Option] = {}
    for option, user in options:
        if declared.setdefault(option.name, option) is not option:
            raise ValueError(f"two different options are named {option.name!r}: declare it once and share it")
        users.setdefault(option.name, []).append(user)
    aliases = {new: [f"--{old}", f"--{old.replace('_', '-')}"] for old, new in RENAMED.items()}

    def metadata(option: Option) -> dict[str, Any]:
        who = ", ".join(dict.fromkeys(users[option.name]))
        return {
            "help": f"{who}: {option.help}" if who else option.help,
            "aliases": sorted(set(aliases.get(option.name, []))),
        }

    fields = [(o.name, o.type, dataclasses.field(default=o.default, metadata=metadata(o))) for o in declared.values()]

    def __post_init__(self: Any) -> None:
        for option in declared.values():
            option.validate(getattr(self, option.name))

    return dataclasses.make_dataclass(
        "MethodSettings",
        fields,
        namespace={
            "__post_init__": __post_init__,
            "__doc__": 'Settings of the methods; None means "the method\'s default" (see :mod:`.methods`).',
            "__module__": __name__,
            "_argument_group_name": "method settings (default: the method's own)",
        },
    )
