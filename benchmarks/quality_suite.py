"""The quality suite: runs a grid of (model, task, method, settings, seed) through the harness, and reports.

``run`` goes through the grid (:data:`GRID_V1`) in order and starts every run that is not finished as its own
harness process (``python -m peft_superpos.train ...``), one run folder per run under ``--runs-dir`` (default
``runs/quality``, git-ignored; it holds the checkpoints), logging its output to ``<run folder>/log.txt``:

* a run whose results are in the results folder (``benchmarks/results/quality/<model>/<task>/<run>/``) at its
  step budget is finished and skipped, committed or not;
* an interrupted run is started again with the same command: the harness resumes from its last checkpoint;
* a run that fails is recorded in ``failures.jsonl`` of the results folder and the next run starts;
* after each run its small results (``final.json``, ``metrics.jsonl`` and, while small, every evaluation's
  per-example predictions in one compressed file, ``predictions.jsonl.gz``: ``quality_predictions.py``) are copied
  into the results folder (``final.json`` last, each file atomically: ``quality_run_results.py``) and, with
  ``--commit REPO``, committed in that repository: exactly those paths, nothing else that is staged or changed.

The suite runs niced, so it can work in the background for hours (many CPU-hours; it spans sessions)::

    nohup python -m benchmarks.quality_suite run --commit . > runs/quality/suite.log 2>&1 &
    python -m benchmarks.quality_suite run --dry-run            # every run in order: done / partial / todo
    python -m benchmarks.quality_suite run --only 'smollm2/sst2/*'
    python -m benchmarks.quality_suite report                   # tables and figures from the results folder
    python -m benchmarks.quality_suite compact                  # predictions copied one file per evaluation

``compact`` folds prediction files copied in the harness's layout (``predictions/step-<step>.jsonl``, by a suite
of an earlier version) into each run's compressed file and deletes them; it is idempotent. ``report`` writes the
tables and figures (``quality_report.py``), reading either layout; the grid itself is ``quality_grid.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import fnmatch
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

from benchmarks.quality_grid import (
    BATCH_SIZE,
    DEFAULT_RESULTS_DIR,
    DEV_SIZE,
    EXTEND,
    FAILURES_FILE,
    GRID_V1,
    MODELS,
    REPO_ROOT,
    LrCheckError,
    RunSpec,
    failure_counts,
    is_complete,
    read_json,
)
from benchmarks.quality_grid_v2 import GRID_V2, resolve_settings
from benchmarks.quality_predictions import COMPACT_FILE, compact_results
from benchmarks.quality_report import CURVES_DIR, REPORT_FILES, REPORT_V2_FILES, write_outputs
from benchmarks.quality_run_results import copy_results, record_failure, run_status

GRIDS = {"v1": GRID_V1, "v2": GRID_V2}
DEFAULT_RUNS_DIR = REPO_ROOT / "runs" / "quality"
DEFAULT_DATA_DIR = os.environ.get("PEFT_SUPERPOS_DATA_DIR") or str(REPO_ROOT.parent / "shared" / "data")

# ----------------------------------------------------------------------------------------------------------
# Committing results
# ----------------------------------------------------------------------------------------------------------


class CommitError(RuntimeError):
    """``git add``/``git commit`` of the result paths failed."""


def git_commit(repo: Path, paths: Sequence[Path], message: str, attempts: int = 6, wait_s: float = 2.0) -> bool:
    """Commit exactly ``paths`` in ``repo`` (other staged or unstaged changes stay as they are). Retries while
    another process holds ``.git/index.lock``. Returns False when the paths had nothing new to commit."""
    names = [str(Path(p).resolve()) for p in paths]
    for attempt in range(attempts):
        done = subprocess.run(["git", "-C", str(repo), "add", "--", *names], capture_output=True, text=True)
        if done.returncode == 0:
            staged = subprocess.run(["git", "-C", str(repo), "diff", "--cached", "--quiet", "--", *names])
            if staged.returncode == 0:
                return False
            done = subprocess.run(
                ["git", "-C", str(repo), "commit", "--quiet", "-m", message, "--", *names],
                capture_output=True,
                text=True,
            )
            if done.returncode == 0:
                return True
        if "index.lock" not in done.stderr or attempt == attempts - 1:
            raise CommitError(f"git in {repo} failed ({done.returncode}): {done.stderr.strip()}")
        time.sleep(wait_s)
    raise AssertionError("unreachable")


# ----------------------------------------------------------------------------------------------------------
# Running
# ----------------------------------------------------------------------------------------------------------

#: ``runner(command, log_path) -> exit code``; the default starts the harness as a subprocess.
Runner = Callable[[Sequence[str], Path], int]


def harness_command(
    spec: RunSpec,
    run_dir: Path,
    data_dir: str,
    lr: float | None,
    models: Mapping[str, str] = MODELS,
    weight_init: str | None = None,
) -> list[str]:
    """The harness command line of one run (the same every time, so an interrupted run resumes)."""
    command = [sys.executable, "-m", "peft_superpos.train", spec.task, "--data-dir", str(data_dir)]
    command += ["--model", models[spec.model], "--method", spec.method, "--seed", str(spec.seed)]
    command += ["--batch-size", str(BATCH_SIZE)]
    if spec.dev:
        command += ["--dev-size", str(DEV_SIZE), "--eval-split", "dev"]
    elif spec.max_eval_samples is not None:
        command += ["--max-eval-samples", str(spec.max_eval_samples)]
    if spec.max_train_samples is not None:
        command += ["--max-train-samples", str(spec.max_train_samples)]
    command += ["--output-dir", str(run_dir), "--disable-tqdm"]
    if spec.eval_only:
        command.append("--eval-only")
    else:
        command += ["--max-steps", str(spec.max_steps), "--eval-steps", str(spec.eval_steps)]
    if lr is not None:
        command += ["--lr", f"{lr:g}"]
    if spec.m is not None:
        command += ["--m", str(spec.m)]
    if spec.softmax:
        command.append("--softmax")
    if spec.keep_dropout:
        command.append("--keep-dropout")
    if weight_init is not None:
        command += ["--weight-init", weight_init]
    return command


def subprocess_runner(command: Sequence[str], log_path: Path) -> int:
    """Run ``command`` from the repository root with its output appended to ``log_path``; the child is
    stopped if the suite is interrupted, so no orphan keeps writing into the run folder."""
    with open(log_path, "a") as log:
        log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(command)}\n")
        log.flush()
        # close_fds=False: the child inherits the run's lock (the only inheritable descriptor, see run_lock), so
        # a harness that outlives a killed suite still keeps a new suite off its run folder
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT, close_fds=False)
        try:
            return process.wait()
        finally:
            if process.poll() is None:
                process.terminate()  # the harness saves nothing half-written; a restart resumes
                process.wait()


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[bool]:
    """Hold ``run_dir/.suite.lock``; yields False if another process (a suite, or the harness child of a killed
    suite, which inherits the lock) is running this run."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / ".suite.lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        os.set_inheritable(handle.fileno(), True)
        yield True


def select(grid: Sequence[RunSpec], only: Sequence[str] | None) -> list[RunSpec]:
    """The specs whose run id matches one of the ``only`` globs (all without)."""
    return [s for s in grid if not only or any(fnmatch.fnmatchcase(s.run_id, pattern) for pattern in only)]


def dry_run(
    grid: Sequence[RunSpec], runs_dir: Path, results_dir: Path, only: Sequence[str] | None = None
) -> dict[str, int]:
    """Print every selected run in order with its status; returns the count per status."""
    specs = select(grid, only)
    failures = failure_counts(results_dir)
    counts = {"done": 0, "partial": 0, "todo": 0}
    for index, spec in enumerate(specs, 1):
        status = run_status(spec, runs_dir, results_dir)
        counts[status] += 1
        notes = []
        if isinstance(spec.lr, str) or spec.stage == EXTEND:
            try:
                settings = resolve_settings(spec, grid, results_dir)
                notes.append("not needed" if settings is None else f"lr {settings.lr:g} ({spec.lr})")
            except LrCheckError:
                notes.append(f"lr: {spec.lr}, not finished yet")
        if spec.max_steps:
            notes.append(f"{spec.max_steps} steps")
        if failures.get(spec.run_id) and status != "done":
            notes.append(f"failed {failures[spec.run_id]}x")
        print(f"[{index:3d}/{len(specs)}] {status:7s} {spec.run_id:45s} {', '.join(notes)}")
    print(", ".join(f"{n} {status}" for status, n in counts.items()))
    return counts


def run_suite(
    grid: Sequence[RunSpec],
    runs_dir: Path,
    results_dir: Path,
    data_dir: str,
    only: Sequence[str] | None = None,
    runner: Runner = subprocess_runner,
    commit_repo: Path | None = None,
    models: Mapping[str, str] = MODELS,
) -> list[str]:
    """Run every selected spec that is not finished, in order; returns the ids of the runs that failed."""
    specs = select(grid, only)
    failed: list[str] = []
    committer = ResultCommitter(commit_repo)

    def publish(paths: Sequence[Path], message: str) -> None:
        committer.commit([*paths, *refresh_report(grid, results_dir)], message)

    def fail(spec: RunSpec, reason: str, log_path: Path | None = None) -> None:
        print(f"FAILED {spec.run_id}: {reason}", flush=True)
        failed.append(spec.run_id)
        publish([record_failure(results_dir, spec, reason, log_path)], f"quality: failed {spec.run_id}")

    # Results copied by a suite that was killed before committing them: finished, so commit them now.
    left_over = [results_dir / name for name in (FAILURES_FILE, *REPORT_FILES, *REPORT_V2_FILES)]
    for spec in grid:  # the files of finished copies, not the temporary files of an interrupted copy
        left_over += [p for p in (results_dir / spec.run_id).rglob("*") if p.is_file() and not p.name.startswith(".")]
    committer.commit([p for p in left_over if p.exists()], "quality: results left uncommitted by an earlier suite")

    for index, spec in enumerate(specs, 1):
        status = run_status(spec, runs_dir, results_dir)
        if status == "done":
            print(f"[{index}/{len(specs)}] done    {spec.run_id}", flush=True)
            continue
        try:
            settings = resolve_settings(spec, grid, results_dir)
        except LrCheckError as error:
            fail(spec, str(error))
            continue
        if settings is None:
            print(f"[{index}/{len(specs)}] skipped {spec.run_id}: the sweep's best is not at this edge", flush=True)
            continue
        run_dir = runs_dir / spec.run_id
        command = harness_command(spec, run_dir, data_dir, settings.lr, models, settings.weight_init)
        with run_lock(run_dir) as locked:
            if not locked:
                print(f"[{index}/{len(specs)}] busy    {spec.run_id}: another process holds its lock", flush=True)
                continue
            print(f"[{index}/{len(specs)}] {status:7s} {spec.run_id}: running, log {run_dir / 'log.txt'}", flush=True)
            start = time.perf_counter()
            exit_code = runner(command, run_dir / "log.txt")
            final = read_json(run_dir / "final.json")
            if exit_code != 0:
                fail(spec, f"exit code {exit_code}", run_dir / "log.txt")
                continue
            if final is None or not is_complete(spec, final):
                fail(spec, f"exit code 0 but no final.json at step {spec.max_steps}", run_dir / "log.txt")
                continue
            copied = copy_results(run_dir, results_dir / spec.run_id)
        print(f"          finished in {time.perf_counter() - start:.0f} s: {results_dir / spec.run_id}", flush=True)
        publish(copied, f"quality: {spec.run_id}")
    return failed


class ResultCommitter:
    """Commits result paths in ``repo`` (None: commits nothing). Paths whose commit failed (e.g. during a merge
    in that repository) are kept and committed with the next ones."""

    def __init__(self, repo: Path | None) -> None:
        self.repo = repo
        self.pending: list[Path] = []

    def commit(self, paths: Sequence[Path], message: str) -> None:
        if self.repo is None or not paths:
            return
        self.pending = list(dict.fromkeys([*self.pending, *paths]))
        try:
            git_commit(self.repo, self.pending, message)
            self.pending = []
        except CommitError as error:  # the files are in the results folder; retried with the next commit
            print(f"warning: {error}", flush=True)


def refresh_report(grid: Sequence[RunSpec], results_dir: Path) -> list[Path]:
    """:func:`write_outputs` without figures after each run, so that what is committed stays consistent; a
    problem is printed, never raised (``report`` shows it again)."""
    try:
        return write_outputs([grid], results_dir, plots=False)[1]
    except Exception as error:
        print(f"warning: could not refresh the report: {error!r}", flush=True)
        return []


# ----------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.quality_suite",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the grid (niced); skips finished runs, resumes interrupted ones")
    run.add_argument("--runs-dir", type=Path, default=DEFAULT_RUNS_DIR, help="run folders (checkpoints)")
    run.add_argument("--results-dir", type=Path, default=DEFAULT_RESULTS_DIR, help="small results (committed)")
    run.add_argument("--data-dir", default=DEFAULT_DATA_DIR, help="task data (default: $PEFT_SUPERPOS_DATA_DIR "
                     "or ../shared/data)")  # fmt: skip
    run.add_argument("--only", action="append", metavar="GLOB", help="run ids to run, e.g. 'smollm2/sst2/*'")
    run.add_argument("--dry-run", action="store_true", help="print the runs in order with their status")
    run.add_argument("--commit", type=Path, metavar="REPO", help="commit each run's results in this git repo")
    run.add_argument("--grid", choices=sorted(GRIDS), default="v1", help="which grid (v2: issue 19's stages A and B)")
    report = commands.add_parser("report", help="tables and figures from the results folder")
    report.add_argument("--results-dir", type=Path, default=DEFAULT_RESULTS_DIR)
    report.add_argument("--no-plots", action="store_true")
    compact = commands.add_parser("compact", help="fold prediction files in the harness's layout into one "
                                  "compressed file per run (idempotent)")  # fmt: skip
    compact.add_argument("--results-dir", type=Path, default=DEFAULT_RESULTS_DIR)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "report":
        reports, written = write_outputs(list(GRIDS.values()), args.results_dir, plots=not args.no_plots)
        for report in reports:
            print(report["tables"]["status"])
        print("wrote " + ", ".join(map(str, written)) + ("" if args.no_plots else f", {CURVES_DIR}/*.png"))
        return 0
    if args.command == "compact":
        written = compact_results(args.results_dir)
        print(f"{len(written)} runs' predictions folded into {COMPACT_FILE}" + "".join(f"\n  {p}" for p in written))
        return 0
    grid = GRIDS[args.grid]
    if args.dry_run:
        dry_run(grid, args.runs_dir, args.results_dir, args.only)
        return 0
    if not Path(args.data_dir).is_dir():
        print(f"--data-dir {args.data_dir} is not a folder (it needs glue/ and superglue/)", file=sys.stderr)
        return 2
    os.nice(10)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the current harness child too (finally)
    failed = run_suite(grid, args.runs_dir, args.results_dir, args.data_dir, args.only, commit_repo=args.commit)
    print(f"{len(failed)} runs failed" + (f": {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
