"""Files that are never seen half-written: the package's one home for write-to-a-temporary-then-rename.

* :func:`atomic_write` / :func:`atomic_write_text`: one file, written beside itself and renamed over it;
* :func:`staged_files`: the files of a folder (a saved adapter, an export) written into a staging folder beside
  it, then moved in one by one, each by an atomic rename, the files named ``last`` last (e.g. the config that
  describes the others); files of the folder that the save does not write are kept;
* :func:`staged_folder`: a whole folder (a cache) built beside its place and renamed onto it, under a lock the
  caller holds.

Staging folders are named ``.<target>.saving-<host>-<pid>-<random>`` (:func:`staging_prefix`): a save killed
(``kill -9``, power loss) leaves one behind, and the next save into the same target removes those whose process
on this host is gone. Plain Python: this module imports nothing from the package, so every layer can use it.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import tempfile
from collections.abc import Callable, Collection, Iterator, Mapping
from pathlib import Path

__all__ = ["atomic_write", "atomic_write_text", "staged_files", "staged_folder", "staging_prefix"]


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """Write ``path`` through ``write(temporary path)`` and a rename, so it is never seen half-written."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


def staging_prefix(target: Path) -> str:
    """The start of the names of the staging folders of ``target`` (then ``<host>-<pid>-<random>``)."""
    return f".{target.name}.saving-"


def _host_prefix(target: Path) -> str:
    return f"{staging_prefix(target)}{socket.gethostname()}-"


@contextlib.contextmanager
def staged_files(
    target: str | os.PathLike, last: Collection[str] = (), replaces: Mapping[str, Collection[str]] | None = None
) -> Iterator[Path]:
    """Yield an empty staging folder beside ``target``; when the block ends without an error, move every file
    written into it to the same relative path under ``target`` (created if needed), each by an atomic rename after
    an fsync, the files named in ``last`` after all others. ``replaces`` maps a file name to the names of files it
    replaces: those are removed from its folder right after it moves in (e.g. a weights file of another format).
    On an error ``target`` is left as it was. The staging folder is removed either way."""
    target = Path(target)
    with _staging(target) as staging:
        yield staging
        files = sorted((p for p in staging.rglob("*") if p.is_file()), key=lambda p: (p.name in last, str(p)))
        for file in files:
            with open(file, "rb") as handle:
                os.fsync(handle.fileno())
            destination = target / file.relative_to(staging)
            destination.parent.mkdir(parents=True, exist_ok=True)
            os.replace(file, destination)
            for other in (replaces or {}).get(file.name, ()):
                destination.with_name(other).unlink(missing_ok=True)


@contextlib.contextmanager
def staged_folder(target: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty staging folder beside ``target``; when the block ends without an error, replace ``target``
    (removed first when it exists) by it with one rename. Hold a lock on ``target`` around the block: no other
    writer is then under way, so every staging folder of ``target`` (from any process) is abandoned and removed.
    On an error ``target`` is left as it was and the staging folder is removed."""
    target = Path(target)
    for stale in target.parent.glob(f"{glob.escape(staging_prefix(target))}*"):
        shutil.rmtree(stale, ignore_errors=True)
    with _staging(target) as staging:
        yield staging
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)


@contextlib.contextmanager
def _staging(target: Path) -> Iterator[Path]:
    """A new staging folder beside ``target`` (after removing those whose process is gone), removed at the end."""
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned_staging(target)
    staging = Path(tempfile.mkdtemp(prefix=f"{_host_prefix(target)}{os.getpid()}-", dir=target.parent))
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _remove_abandoned_staging(target: Path) -> None:
    """Delete staging folders of ``target`` whose process (on this host) is gone, e.g. killed -9."""
    prefix = _host_prefix(target)
    for folder in target.parent.glob(f"{glob.escape(prefix)}*"):
        pid = folder.name[len(prefix) :].split("-", 1)[0]
        if pid.isdigit() and not _process_alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True
