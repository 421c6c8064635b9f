"""The versions of transformers and peft this package is tested with, and what happens outside them.

CI tests both ends of the window (``.ci/run``): the lowest versions ``setup.cfg`` allows (``constraints/lowest.txt``)
and the newest. ``TESTED`` is the same window as ``setup.cfg``'s ``[tested_versions]`` (a test checks). A peft
outside the supported minor release is an error, since ``_peft_compat`` patches its internals; any other version
outside the tested window (a release newer than the last one tested) gets one warning at import.
"""

from __future__ import annotations

import warnings

import peft
import transformers
from packaging.version import Version

# (lowest, newest) tested, for each package whose internals peft_superpos depends on
TESTED = {"transformers": ("5.4.0", "5.25.0"), "peft": ("0.21.0", "0.21.2")}
SUPPORTED_PEFT = (Version("0.21.0"), Version("0.22.0"))  # [min, max): setup.cfg's pin


class UntestedVersionWarning(UserWarning):
    """transformers or peft is outside the window peft_superpos is tested with."""


def require_supported_peft(version: str = peft.__version__) -> None:
    low, high = SUPPORTED_PEFT
    if not (low.release <= Version(version).release < high.release):
        raise ImportError(
            f"peft_superpos supports peft>={low},<{high} but peft {version} is installed: run "
            f'`pip install "peft>={low},<{high}"`.'
        )


def untested_versions_message(installed: dict[str, str]) -> str | None:
    """The warning for the ``installed`` versions (package name -> version) outside ``TESTED``, or None."""
    outside = [
        f"{name} {version}"
        for name, version in installed.items()
        if not (Version(TESTED[name][0]).release <= Version(version).release <= Version(TESTED[name][1]).release)
    ]
    if not outside:
        return None
    window = " and ".join(f"{name} {low} to {high}" for name, (low, high) in TESTED.items())
    pins = " ".join(f'"{name}>={low},<={high}"' for name, (low, high) in TESTED.items())
    verb = "is" if len(outside) == 1 else "are"
    return (
        f"peft_superpos is tested with {window}; {' and '.join(outside)} {verb} untested. It may work; if "
        f"something fails, install tested versions (pip install {pins}) and report the failure."
    )


def warn_if_untested(installed: dict[str, str] | None = None) -> None:
    """One ``UntestedVersionWarning`` naming the tested window when transformers or peft is outside it."""
    if installed is None:
        installed = {"transformers": transformers.__version__, "peft": peft.__version__}
    message = untested_versions_message(installed)
    if message is not None:
        warnings.warn(message, UntestedVersionWarning, stacklevel=2)
