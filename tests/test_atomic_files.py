"""peft_superpos.atomic_files: a file or a folder of files is seen whole or not at all, a failure or a kill leaves the
target as it was, the files named ``last`` move in last, and staging folders of dead processes are removed."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap

import pytest
from tiny_models import subprocess_env

from peft_superpos.atomic_files import atomic_write, atomic_write_text, staged_files, staged_folder, staging_prefix


def contents(folder) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def dead_pid() -> int:
    return int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True).stdout)


@pytest.fixture
def moves(monkeypatch):
    """The renames and removals, in order: ("replace", file name) and ("unlink", file name)."""
    done = []
    replace, unlink = os.replace, os.unlink

    def recording_replace(source, destination):
        done.append(("replace", os.path.basename(destination)))
        replace(source, destination)

    def recording_unlink(path, *args, **kwargs):
        done.append(("unlink", os.path.basename(path)))
        unlink(path, *args, **kwargs)

    monkeypatch.setattr(os, "replace", recording_replace)
    monkeypatch.setattr(os, "unlink", recording_unlink)
    return done


def test_atomic_write_replaces_the_file_and_a_failure_keeps_the_old_one(tmp_path):
    path = tmp_path / "final.json"
    atomic_write_text(path, "old")

    def half_then_fail(tmp):
        tmp.write_text("ha")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        atomic_write(path, half_then_fail)
    assert contents(tmp_path) == {"final.json": b"old"}  # no temporary left either
    atomic_write_text(path, "new")
    assert contents(tmp_path) == {"final.json": b"new"}


def test_staged_files_appear_only_when_the_block_ends(tmp_path):
    target = tmp_path / "adapter"
    with staged_files(target) as staging:
        assert staging.parent == tmp_path and staging.name.startswith(staging_prefix(target))
        (staging / "weights").write_bytes(b"w")
        (staging / "sub").mkdir()
        (staging / "sub" / "config").write_bytes(b"c")
        assert not target.exists()
    assert contents(target) == {"sub/config": b"c", "weights": b"w"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]  # the staging folder is gone


def test_a_failure_in_the_block_leaves_the_target_as_it_was(tmp_path):
    target = tmp_path / "adapter"
    target.mkdir()
    (target / "weights").write_bytes(b"old weights")
    (target / "config").write_bytes(b"old config")
    with pytest.raises(OSError, match="disk full"), staged_files(target, last=("config",)) as staging:
        (staging / "weights").write_bytes(b"new wei")
        raise OSError("disk full")
    assert contents(target) == {"config": b"old config", "weights": b"old weights"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]


def test_files_named_last_move_in_last_and_replaced_files_go_right_after_their_replacement(tmp_path, moves):
    target = tmp_path / "adapter"
    (target / "named").mkdir(parents=True)
    (target / "old.bin").write_bytes(b"other format")
    (target / "notes.txt").write_bytes(b"mine")
    with staged_files(target, last=("config",), replaces={"new.st": ("old.bin",)}) as staging:
        for name in ("config", "new.st", "README.md", "named/config", "named/new.st"):
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            (staging / name).write_bytes(name.encode())
    assert moves == [
        ("replace", "README.md"),
        ("replace", "new.st"),  # named/new.st
        ("unlink", "old.bin"),  # named/old.bin (none there)
        ("replace", "new.st"),
        ("unlink", "old.bin"),
        ("replace", "config"),
        ("replace", "config"),  # named/config
    ]
    assert sorted(contents(target)) == ["README.md", "config", "named/config", "named/new.st", "new.st", "notes.txt"]


def test_staging_folders_of_dead_processes_on_this_host_are_removed(tmp_path):
    target = tmp_path / "adapter"
    host, pid = socket.gethostname(), dead_pid()
    abandoned = tmp_path / f"{staging_prefix(target)}{host}-{pid}-x1"
    live = tmp_path / f"{staging_prefix(target)}{host}-{os.getpid()}-x2"  # a save under way in a live process
    other_host = tmp_path / f"{staging_prefix(target)}elsewhere-{pid}-x3"  # its pid is not one of this machine
    other_target = tmp_path / f"{staging_prefix(tmp_path / 'other')}{host}-{pid}-x4"
    for folder in (abandoned, live, other_host, other_target):
        folder.mkdir()
        (folder / "weights").write_bytes(b"partial")
    with staged_files(target) as staging:
        (staging / "weights").write_bytes(b"w")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["adapter", live.name, other_host.name, other_target.name]
    )


_KILLED = textwrap.dedent(
    """
    import os, signal, sys
    from peft_superpos.atomic_files import staged_files
    with staged_files(sys.argv[1], last=("config",)) as staging:
        (staging / "weights").write_bytes(b"new weights")
        os.kill(os.getpid(), signal.SIGKILL)
    """
)


def test_a_killed_save_leaves_the_target_as_it_was_and_the_next_save_cleans_up(tmp_path):
    target = tmp_path / "adapter"
    target.mkdir()
    (target / "weights").write_bytes(b"old weights")
    proc = subprocess.run(
        [sys.executable, "-c", _KILLED, str(target)], env=subprocess_env(), capture_output=True, timeout=120
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    assert contents(target) == {"weights": b"old weights"}
    assert len(list(tmp_path.glob(f"{staging_prefix(target)}*"))) == 1  # the debris
    with staged_files(target) as staging:
        (staging / "weights").write_bytes(b"new weights")
    assert contents(target) == {"weights": b"new weights"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]


def test_staged_folder_replaces_the_whole_folder_or_leaves_it_as_it_was(tmp_path):
    target = tmp_path / "cache"
    target.mkdir()
    (target / "config.json").write_bytes(b"{}")  # an invalid cache, e.g. copied by hand
    stale = tmp_path / f"{staging_prefix(target)}elsewhere-{os.getpid()}-x1"  # under the lock: abandoned
    stale.mkdir()
    with pytest.raises(OSError, match="disk full"), staged_folder(target) as staging:
        (staging / "weights").write_bytes(b"half")
        raise OSError("disk full")
    assert contents(target) == {"config.json": b"{}"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]
    with staged_folder(target) as staging:
        (staging / "weights").write_bytes(b"w")
        (staging / "marker").write_bytes(b"m")
        assert contents(target) == {"config.json": b"{}"}
    assert contents(target) == {"marker": b"m", "weights": b"w"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]
