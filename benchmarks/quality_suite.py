"""The quality suite: a grid of (model, task, method, settings, seed) runs through the harness, and its report.

``run`` goes through the grid (:data:`GRID_V1`) in order and starts every run that is not finished as its own
harness process (``python -m peft_superpos.train ...``), one run folder per run under ``--runs-dir`` (default
``runs/quality``, git-ignored; it holds the checkpoints), logging its output to ``<run folder>/log.txt``:

* a run whose results are in the results folder (``benchmarks/results/quality/<model>/<task>/<run>/``) at its
  step budget is finished and skipped, committed or not;
* an interrupted run is started again with the same command: the harness resumes from its last checkpoint;
* a run that fails is recorded in ``failures.jsonl`` of the results folder and the next run starts;
* after each run its small results (``final.json``, ``metrics.jsonl`` and the prediction files when they are
  small) are copied into the results folder (``final.json`` last, each file atomically) and, with ``--commit
  REPO``, committed in that repository: exactly those paths, nothing else that is staged or changed.

The suite runs niced, so it can work in the background for hours (many CPU-hours; it spans sessions)::

    nohup python benchmarks/quality_suite.py run --commit . > runs/quality/suite.log 2>&1 &
    python benchmarks/quality_suite.py run --dry-run            # every run in order: done / partial / todo
    python benchmarks/quality_suite.py run --only 'smollm2/sst2/*'
    python benchmarks/quality_suite.py report                   # tables and figures from the results folder

``report`` reads the results folder alone (never the run folders) and writes ``report.md``, ``report.json``
and the learning-curve PNGs there, then regenerates ``benchmarks/RESULTS.md`` (``make_results.py``). Runs that
are not finished show as "—", so the report works on a partial grid. Its head to head tests each task's
difference with a paired bootstrap over the per-example predictions of the best evaluations
(``peft_superpos.metrics.bootstrap``), so a gap of one example on COPA's 100 does not count as a win.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import fnmatch
import functools
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from peft_superpos import SuperPosPromptConfig  # noqa: E402
from peft_superpos.data import get_task  # noqa: E402
from peft_superpos.harness.callbacks import append_row, atomic_write_text, predictions_path, read_rows  # noqa: E402
from peft_superpos.harness.evaluation import best_constant_prediction, constant_prediction_floor  # noqa: E402
from peft_superpos.metrics.bootstrap import BETTER, WITHIN_NOISE, WORSE, bootstrap_scores, paired_difference  # noqa: E402

DEFAULT_RESULTS_DIR = Path(__file__).resolve().parent / "results" / "quality"
DEFAULT_RUNS_DIR = REPO_ROOT / "runs" / "quality"
DEFAULT_DATA_DIR = os.environ.get("PEFT_SUPERPOS_DATA_DIR") or str(REPO_ROOT.parent / "shared" / "data")
FAILURES_FILE = "failures.jsonl"
REPORT_FILES = ("report.md", "report.json")
CURVES_DIR = "curves"
#: Prediction files are copied into the results only while together they stay below this size.
PREDICTIONS_MAX_BYTES = 200_000
PREDICTION_PATTERNS = ("predictions*", "predictions/*")

# ----------------------------------------------------------------------------------------------------------
# The grid: data. Order matters: the runner goes through it in order.
# ----------------------------------------------------------------------------------------------------------

#: Suite model name -> the harness's ``--model``.
MODELS: Mapping[str, str] = {"smollm2": "smollm2-135m-instruct", "minilm": "minilm"}
#: Settings every run shares (the paper's protocol: generation eval on the first <= 300 validation examples).
MAX_EVAL_SAMPLES = 300
BATCH_SIZE = 8
EVAL_STEPS = 100
#: ``lr`` of a spec that takes the best learning rate of the lr check (resolved when the runner reaches it).
FROM_LR_CHECK = "from_lr_check"
#: The paper's learning rate for SuperPos and prompt tuning; it wins ties in the lr check.
PAPER_LR = 1e-2

ZERO_SHOT, LR_CHECK, MAIN, SEED, ABLATION, MINILM = "zero-shot", "lr-check", "main", "seed", "ablation", "minilm"
#: Run order. MiniLM runs are cheap (a 22M-parameter encoder): they go early and answer the dropout question.
STAGES = (ZERO_SHOT, MINILM, LR_CHECK, MAIN, SEED, ABLATION)

SHORT_TASKS = ("sst2", "cola", "copa", "stsb")
MAIN_TASKS = (*SHORT_TASKS, "mrpc", "rte", "cb")  # short tasks first
MAIN_METHODS = ("superpos", "prompt_tuning", "residual", "lora")
TUNED_METHODS = ("superpos", "prompt_tuning")  # their lr comes from the lr check
LR_CHECK_TASKS = ("sst2", "cola")
LR_CHECK_VALUES = (3e-3, 1e-2, 3e-2)
#: SST-2 at two seeds rather than two tasks: on CoLA, COPA and STS-B every method of the main stage (LoRA too)
#: stayed at the majority floor within 400 steps, where no variant of m could show a difference.
ABLATION_TASKS = ("sst2",)
ABLATION_SEEDS = (42, 7)
ABLATION_M = (16, 64, 256)  # m=128 is the main run
MINILM_TASKS = ("sst2", "mrpc", "rte", "cola")

#: Step budgets (optimizer steps of batch 8); one budget for every method of a task. Sized from step times
#: measured on the 2-core CPU (benchmarks/results/padding-smollm2.md, grouped batches: SST-2 ~1.5 s/step,
#: CB/RTE ~3.1-3.3 s/step; a 300-example generation eval ~35 s on short tasks): short tasks ~12 min a run,
#: long tasks ~17 min, the whole grid ~12 CPU-hours. See RESULTS.template.md for the reasoning.
LR_CHECK_STEPS = 200
MAIN_STEPS: Mapping[str, int] = {"sst2": 400, "cola": 400, "copa": 400, "stsb": 400, "mrpc": 300, "rte": 300, "cb": 300}
MINILM_STEPS: Mapping[str, int] = {"sst2": 500, "mrpc": 500, "rte": 500, "cola": 500}


@dataclass(frozen=True)
class RunSpec:
    """One run of the grid. ``lr``: a number, None (the method's harness default) or :data:`FROM_LR_CHECK`."""

    stage: str
    model: str
    task: str
    method: str
    seed: int = 42
    max_steps: int | None = None  # None only for eval-only runs
    eval_steps: int = EVAL_STEPS
    lr: float | str | None = None
    m: int | None = None
    softmax: bool = False
    keep_dropout: bool = False
    eval_only: bool = False

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ValueError(f"unknown stage {self.stage!r}; expected one of {STAGES}")
        if self.eval_only == (self.max_steps is not None):
            raise ValueError(f"{self.task}/{self.method}: give max_steps to a training run, and none to eval-only")
        if isinstance(self.lr, str) and self.lr != FROM_LR_CHECK:
            raise ValueError(f"lr must be a number, None or {FROM_LR_CHECK!r}, got {self.lr!r}")

    @property
    def run_name(self) -> str:
        """Folder name, unique within (model, task): e.g. ``superpos-m16-s42``, ``lrcheck-superpos-lr0.01-s42``."""
        if self.eval_only:
            return "zero-shot"
        parts = ["lrcheck"] if self.stage == LR_CHECK else []
        parts.append(self.method)
        if self.stage == LR_CHECK:
            parts.append(f"lr{self.lr:g}")
        if self.m is not None:
            parts.append(f"m{self.m}")
        if self.softmax:
            parts.append("softmax")
        if self.keep_dropout:
            parts.append("dropout")
        return "-".join([*parts, f"s{self.seed}"])

    @property
    def run_id(self) -> str:
        return f"{self.model}/{self.task}/{self.run_name}"

    @property
    def series(self) -> str:
        """What the report calls this setting; the runs of one series differ only by seed."""
        if self.eval_only:
            return "zero-shot"
        label = self.method
        if self.stage == LR_CHECK:
            label += f" lr={self.lr:g}"
        if self.m is not None:
            label += f" m={self.m}"
        if self.softmax:
            label += " softmax"
        if self.stage == MINILM:
            label += ", dropout on" if self.keep_dropout else ", dropout off"
        return label


def grid_v1() -> tuple[RunSpec, ...]:
    """Grid v1 of issue 7, in the order it runs."""
    zero_shot = [RunSpec(ZERO_SHOT, "smollm2", task, "full", eval_only=True) for task in MAIN_TASKS]
    lr_check = [
        RunSpec(LR_CHECK, "smollm2", task, method, max_steps=LR_CHECK_STEPS, lr=lr)
        for task in LR_CHECK_TASKS
        for method in TUNED_METHODS
        for lr in LR_CHECK_VALUES
    ]
    main = [
        RunSpec(MAIN, "smollm2", task, method, max_steps=MAIN_STEPS[task],
                lr=FROM_LR_CHECK if method in TUNED_METHODS else None)
        for task in MAIN_TASKS
        for method in MAIN_METHODS
    ]  # fmt: skip
    second_seed = [
        RunSpec(SEED, "smollm2", task, method, seed=7, max_steps=MAIN_STEPS[task], lr=FROM_LR_CHECK)
        for task in SHORT_TASKS
        for method in TUNED_METHODS
    ]
    ablations = [
        RunSpec(ABLATION, "smollm2", task, "superpos", seed=seed, max_steps=MAIN_STEPS[task], lr=FROM_LR_CHECK,
                **variant)
        for seed in ABLATION_SEEDS
        for task in ABLATION_TASKS
        for variant in [*({"m": m} for m in ABLATION_M), {"softmax": True}]
    ]  # fmt: skip
    minilm = [
        RunSpec(MINILM, "minilm", task, method, max_steps=MINILM_STEPS[task], keep_dropout=keep)
        for task in MINILM_TASKS
        for method in TUNED_METHODS
        for keep in (False, True)
    ]
    return check_grid([*zero_shot, *minilm, *lr_check, *main, *second_seed, *ablations])


def check_grid(specs: Sequence[RunSpec]) -> tuple[RunSpec, ...]:
    seen: set[str] = set()
    for spec in specs:
        if spec.run_id in seen:
            raise ValueError(f"two runs of the grid share the id {spec.run_id}")
        seen.add(spec.run_id)
    return tuple(specs)


GRID_V1 = grid_v1()

# ----------------------------------------------------------------------------------------------------------
# Results on disk
# ----------------------------------------------------------------------------------------------------------


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def is_complete(spec: RunSpec, final: Mapping[str, Any]) -> bool:
    """Whether ``final.json`` shows the run at its step budget (eval-only: present)."""
    return spec.eval_only or int(final.get("global_step") or 0) >= spec.max_steps


def finished_final(spec: RunSpec, results_dir: Path) -> dict[str, Any] | None:
    """The run's ``final.json`` from the results folder when the run is finished there, else None."""
    final = read_json(results_dir / spec.run_id / "final.json")
    return final if final is not None and is_complete(spec, final) else None


def run_status(spec: RunSpec, runs_dir: Path, results_dir: Path) -> str:
    """``done`` (results at the step budget), ``partial`` (something started) or ``todo``."""
    if finished_final(spec, results_dir) is not None:
        return "done"
    run_dir = runs_dir / spec.run_id
    started = (results_dir / spec.run_id / "final.json").is_file() or (run_dir / "metrics.jsonl").is_file()
    return "partial" if started or any(run_dir.glob("checkpoint-*")) else "todo"


def prediction_files(folder: Path) -> list[Path]:
    return sorted({p for pattern in PREDICTION_PATTERNS for p in folder.glob(pattern) if p.is_file()})


def copy_results(run_dir: Path, target: Path) -> list[Path]:
    """Copy a run's small results into ``target``, each file atomically and ``final.json`` last (its presence
    marks the copy complete). Prediction files come along while together below :data:`PREDICTIONS_MAX_BYTES`."""
    files = [run_dir / "metrics.jsonl"] if (run_dir / "metrics.jsonl").is_file() else []
    predictions = prediction_files(run_dir)
    if sum(p.stat().st_size for p in predictions) <= PREDICTIONS_MAX_BYTES:
        files += predictions
    copied = []
    for source in [*files, run_dir / "final.json"]:
        destination = target / source.relative_to(run_dir)
        destination.parent.mkdir(parents=True, exist_ok=True)
        temporary = destination.with_name(f".{destination.name}.tmp-{os.getpid()}")
        shutil.copyfile(source, temporary)
        os.replace(temporary, destination)
        copied.append(destination)
    return copied


def record_failure(results_dir: Path, spec: RunSpec, reason: str, log_path: Path | None = None) -> Path:
    """Append one line to ``failures.jsonl`` (run id, reason, the end of the log)."""
    tail = ""
    if log_path is not None and log_path.is_file():
        tail = log_path.read_text(errors="replace")[-2000:]
    path = results_dir / FAILURES_FILE
    results_dir.mkdir(parents=True, exist_ok=True)
    row = {"run_id": spec.run_id, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "reason": reason, "log_tail": tail}
    append_row(path, row)
    return path


def failure_counts(results_dir: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for row in read_rows_plain(results_dir / FAILURES_FILE):
        counts[row["run_id"]] = counts.get(row["run_id"], 0) + 1
    return counts


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
# Learning rate from the lr check
# ----------------------------------------------------------------------------------------------------------


class LrCheckError(RuntimeError):
    """A run takes its lr from the lr check, and the lr check's results are not all there."""


def lr_check_means(model: str, method: str, grid: Sequence[RunSpec], results_dir: Path) -> dict[float, float]:
    """lr -> mean over the check tasks of each run's best score; raises :class:`LrCheckError` if any is missing."""
    checks = [s for s in grid if s.stage == LR_CHECK and s.model == model and s.method == method]
    if not checks:
        raise LrCheckError(f"the grid has no lr-check runs for {model}/{method}")
    scores: dict[float, list[float]] = {}
    missing = []
    for spec in checks:
        result = load_result(spec, results_dir)
        if result is None or result.best is None:
            missing.append(spec.run_id)
        else:
            scores.setdefault(spec.lr, []).append(result.best)
    if missing:
        raise LrCheckError(
            f"the lr check of {model}/{method} is not finished in {results_dir} (missing: {', '.join(missing)}); "
            f"run it first: python benchmarks/quality_suite.py run --only '{model}/*/lrcheck-{method}-*'"
        )
    return {lr: float(np.mean(values)) for lr, values in scores.items()}


def lr_from_check(model: str, method: str, grid: Sequence[RunSpec], results_dir: Path) -> float:
    """The lr with the highest mean best score in the lr check; ties go to the paper's :data:`PAPER_LR`."""
    means = lr_check_means(model, method, grid, results_dir)
    top = max(means.values())
    winners = [lr for lr, mean in means.items() if math.isclose(mean, top, rel_tol=0, abs_tol=1e-9)]
    return PAPER_LR if PAPER_LR in winners else winners[0]


def resolve_lr(spec: RunSpec, grid: Sequence[RunSpec], results_dir: Path) -> float | None:
    if spec.lr == FROM_LR_CHECK:
        return lr_from_check(spec.model, spec.method, grid, results_dir)
    return spec.lr


# ----------------------------------------------------------------------------------------------------------
# Running
# ----------------------------------------------------------------------------------------------------------

#: ``runner(command, log_path) -> exit code``; the default starts the harness as a subprocess.
Runner = Callable[[Sequence[str], Path], int]


def harness_command(
    spec: RunSpec, run_dir: Path, data_dir: str, lr: float | None, models: Mapping[str, str] = MODELS
) -> list[str]:
    """The harness command line of one run (the same every time, so an interrupted run resumes)."""
    command = [sys.executable, "-m", "peft_superpos.train", spec.task, "--data-dir", str(data_dir)]
    command += ["--model", models[spec.model], "--method", spec.method, "--seed", str(spec.seed)]
    command += ["--max-eval-samples", str(MAX_EVAL_SAMPLES), "--batch-size", str(BATCH_SIZE)]
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
    return command


def subprocess_runner(command: Sequence[str], log_path: Path) -> int:
    """Run ``command`` from the repository root with its output appended to ``log_path``; the child is
    stopped if the suite is interrupted, so no orphan keeps writing into the run folder."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    with open(log_path, "a") as log:
        log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(command)}\n")
        log.flush()
        # close_fds=False: the child inherits the run's lock (the only inheritable descriptor, see run_lock), so
        # a harness that outlives a killed suite still keeps a new suite off its run folder
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT, env=env, close_fds=False
        )
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
        if spec.lr == FROM_LR_CHECK:
            try:
                notes.append(f"lr {resolve_lr(spec, grid, results_dir):g} (lr check)")
            except LrCheckError:
                notes.append("lr: from the lr check, not finished yet")
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
    left_over = [results_dir / name for name in (FAILURES_FILE, *REPORT_FILES)]
    for spec in grid:  # the files of finished copies, not the temporary files of an interrupted copy
        left_over += [p for p in (results_dir / spec.run_id).rglob("*") if p.is_file() and not p.name.startswith(".")]
    committer.commit([p for p in left_over if p.exists()], "quality: results left uncommitted by an earlier suite")

    for index, spec in enumerate(specs, 1):
        status = run_status(spec, runs_dir, results_dir)
        if status == "done":
            print(f"[{index}/{len(specs)}] done    {spec.run_id}", flush=True)
            continue
        try:
            lr = resolve_lr(spec, grid, results_dir)
        except LrCheckError as error:
            fail(spec, str(error))
            continue
        run_dir = runs_dir / spec.run_id
        command = harness_command(spec, run_dir, data_dir, lr, models)
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
        return write_outputs(grid, results_dir, plots=False)[1]
    except Exception as error:
        print(f"warning: could not refresh the report: {error!r}", flush=True)
        return []


# ----------------------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------------------


@dataclass
class RunResult:
    """One finished run as the results folder holds it."""

    spec: RunSpec
    final: dict[str, Any]
    rows: list[dict[str, Any]]
    folder: Path

    @property
    def scored(self) -> list[dict[str, Any]]:
        return [r for r in self.rows if r.get("eval_score") is not None]

    @property
    def best_row(self) -> dict[str, Any] | None:
        return max(self.scored, key=lambda r: r["eval_score"], default=None)

    @property
    def best(self) -> float | None:
        return self.best_row["eval_score"] if self.best_row else None

    @property
    def last(self) -> float | None:
        return self.scored[-1]["eval_score"] if self.scored else None

    @property
    def invalid_at_best(self) -> float | None:
        return self.best_row.get("eval_invalid_rate") if self.best_row else None

    @property
    def top_class_at_best(self) -> float | None:
        """Share (%) of the most frequent prediction at the best evaluation: 100 means one class for all."""
        return self.best_row.get("eval_majority_pred_share") if self.best_row else None

    @property
    def early_train_loss(self) -> float | None:
        """Mean training loss over steps 1-EVAL_STEPS (the first logged window): how fast the loss falls."""
        row = next((r for r in self.rows if int(r["step"]) == EVAL_STEPS), None)
        return row.get("train_loss") if row and not row.get("train_loss_partial") else None

    @property
    def steps_to_90(self) -> int | None:
        """First evaluated step whose score reaches 90 % of the run's best (undefined for a negative best)."""
        best = self.best
        if best is None or best < 0:
            return None
        return next(int(r["step"]) for r in self.scored if r["eval_score"] >= 0.9 * best)

    @property
    def seconds_per_step(self) -> float | None:
        rate = (self.final.get("timings") or {}).get("train_steps_per_second")
        return 1.0 / rate if rate else None

    @property
    def best_predictions(self) -> Path | None:
        """The per-example records of the best evaluation (the harness writes one file per evaluation)."""
        return predictions_path(self.folder, int(self.best_row["step"])) if self.best_row else None


def load_result(spec: RunSpec, results_dir: Path) -> RunResult | None:
    final = finished_final(spec, results_dir)
    if final is None:
        return None
    folder = results_dir / spec.run_id
    return RunResult(spec, final, read_rows(folder / "metrics.jsonl"), folder)


def majority_floor(results: Iterable[RunResult]) -> float | None:
    """The best score of a constant prediction on the runs' eval examples: ``floors.majority`` of a final.json,
    else computed from the gold labels of a saved predictions file."""
    results = list(results)
    for result in results:
        floor = (result.final.get("floors") or {}).get("majority")
        if floor is not None:
            return float(floor["score"] if isinstance(floor, dict) else floor)
    for result in results:
        for path in prediction_files(result.folder):
            saved = read_predictions(path, result.spec.task)
            if saved is not None:
                return constant_prediction_floor(get_task(result.spec.task), saved.golds)
    return None


@dataclass(frozen=True)
class SavedPredictions:
    """One evaluation's per-example records, parsed: example ids, gold labels and predictions as label ids
    (STS-B: scores, the golds rounded to 0.2 as saved; ``None``: an invalid prediction)."""

    ids: tuple[int, ...]
    golds: tuple[int | float, ...]
    preds: tuple[int | float | None, ...]


def read_predictions(path: Path, task_name: str) -> SavedPredictions | None:
    """A predictions file as the harness writes it (one JSON object a line: ``id``, and ``gold`` and ``pred`` as
    label words); None if it is missing or empty, or a gold label does not parse."""
    task = get_task(task_name)
    rows = read_rows_plain(path)
    golds = [task.parse_prediction(str(row.get("gold"))) for row in rows]
    if not rows or any(g is None for g in golds):
        return None
    preds = tuple(task.parse_prediction(str(row.get("pred"))) for row in rows)
    return SavedPredictions(tuple(int(row["id"]) for row in rows), tuple(golds), preds)  # type: ignore[arg-type]


def read_rows_plain(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a JSON-lines file (none if it is missing; torn lines skipped)."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(ValueError):
            value = json.loads(line)
            if isinstance(value, dict):
                rows.append(value)
    return rows


def mean_or_none(values: Iterable[float | None]) -> float | None:
    values = list(values)
    return float(np.mean(values)) if values and all(v is not None for v in values) else None


def series_summary(results: Sequence[RunResult]) -> dict[str, Any] | None:
    """Mean over seeds of best, final, steps to 90 %, invalid rate at best, s/step; the mean curve."""
    if not results:
        return None
    steps = sorted(set.intersection(*({int(r["step"]) for r in result.scored} for result in results)))
    curves = [{int(r["step"]): r["eval_score"] for r in result.scored} for result in results]
    return {
        "seeds": [r.spec.seed for r in results],
        "best": mean_or_none(r.best for r in results),
        "final": mean_or_none(r.last for r in results),
        "steps_to_90": mean_or_none(r.steps_to_90 for r in results),
        "invalid_at_best": mean_or_none(r.invalid_at_best for r in results),
        "top_class_at_best": mean_or_none(r.top_class_at_best for r in results),
        "early_train_loss": mean_or_none(r.early_train_loss for r in results),
        "seconds_per_step": mean_or_none(r.seconds_per_step for r in results),
        "curve": {"steps": steps, "scores": [float(np.mean([c[s] for c in curves])) for s in steps]},
    }


def stability(best: Mapping[str, Mapping[str, float | None]], methods: Sequence[str]) -> dict[str, Any]:
    """The paper's stability measure. ``best[task][method]`` -> per task, z-score the methods' scores across
    methods (population std; all-equal scores give 0); per method, the population std across tasks of its
    z-scores. Uses the tasks where every method has a score; None with fewer than two such tasks."""
    tasks = [t for t, scores in best.items() if all(scores.get(m) is not None for m in methods)]
    if len(tasks) < 2 or len(methods) < 2:
        return {"tasks": tasks, "std_of_z": {m: None for m in methods}}
    z = {}
    for task in tasks:
        values = np.array([best[task][m] for m in methods], dtype=float)
        spread = values.std()
        z[task] = (values - values.mean()) / spread if spread > 0 else np.zeros_like(values)
    return {
        "tasks": tasks,
        "std_of_z": {m: float(np.std([z[t][i] for t in tasks])) for i, m in enumerate(methods)},
    }


def fmt(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def md_table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str | None = None) -> str:
    align = align or "---|" + "---:|" * (len(header) - 1)
    lines = ["| " + " | ".join(header) + " |", "|" + align]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def ordered(values: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(values))


class ResultSet:
    """The finished runs of a grid in a results folder, looked up by series."""

    def __init__(self, grid: Sequence[RunSpec], results_dir: Path) -> None:
        self.grid = tuple(grid)
        self.results_dir = results_dir
        self.by_id = {spec.run_id: load_result(spec, results_dir) for spec in grid}
        self.found = [r for r in self.by_id.values() if r is not None]

    def stage(self, stage: str) -> list[RunSpec]:
        return [s for s in self.grid if s.stage == stage]

    def runs(
        self, model: str, task: str, series: str, stages: Sequence[str], seed: int | None = None
    ) -> list[RunResult]:
        """The finished runs of one series (all seeds, or ``seed``)."""
        return [
            r for r in self.found
            if (r.spec.model, r.spec.task, r.spec.series) == (model, task, series) and r.spec.stage in stages
            and (seed is None or r.spec.seed == seed)
        ]  # fmt: skip

    def summary(
        self, model: str, task: str, series: str, stages: Sequence[str], seed: int | None = None
    ) -> dict[str, Any] | None:
        """:func:`series_summary` of the finished runs of one series (all seeds, or ``seed``)."""
        return series_summary(self.runs(model, task, series, stages, seed))


def build_report(grid: Sequence[RunSpec], results_dir: Path) -> dict[str, Any]:
    """Every number and table of the report, from the results folder alone (no plotting)."""
    results = ResultSet(grid, results_dir)
    report: dict[str, Any] = {"planned": len(grid), "finished": len(results.found), "tables": {}}
    report["tables"]["status"] = status_line(results)
    report["tables"]["environments"] = environments_table(results)
    report["tables"]["grid"] = grid_table(grid)
    report["floors"] = floors(results)
    report["series"] = {}
    for model in ordered(s.model for s in results.stage(MAIN)):
        main_comparison(results, model, report)
    lr_check_section(results, report)
    ablation_section(results, report)
    minilm_section(results, report)
    head_to_head_section(results, report)
    return report


def status_line(results: ResultSet) -> str:
    failed = [run_id for run_id in failure_counts(results.results_dir) if results.by_id.get(run_id) is None]
    stages = []
    for stage in STAGES:
        specs = results.stage(stage)
        if specs:
            stages.append(f"{stage} {sum(results.by_id[s.run_id] is not None for s in specs)}/{len(specs)}")
    return (
        f"{len(results.found)} of {len(results.grid)} planned runs finished ({', '.join(stages)}); "
        f"{len(failed)} unfinished runs have failed at least once (failures.jsonl)."
    )


ENVIRONMENT_KEYS = ("device", "torch_threads", "torch", "transformers", "peft")


def environments_table(results: ResultSet) -> str:
    """Where the finished runs computed (``environment`` of final.json: the session that finished the run)."""
    recorded = [r.final.get("environment") or {} for r in results.found]
    counts = Counter(tuple(env.get(k, "not recorded") for k in ENVIRONMENT_KEYS) for env in recorded)
    rows = [[*map(str, env), str(n)] for env, n in sorted(counts.items(), key=lambda item: -item[1])]
    return md_table([*(k.replace("_", " ") for k in ENVIRONMENT_KEYS), "runs"], rows, align="---|" * 5 + "---:|")


def grid_table(grid: Sequence[RunSpec]) -> str:
    """What the grid runs, stage by stage (from the specs, so it follows any resizing of the budgets)."""
    rows = []
    for stage in STAGES:
        specs = [s for s in grid if s.stage == stage]
        for model in ordered(s.model for s in specs):
            mine = [s for s in specs if s.model == model]
            steps = sorted({s.max_steps for s in mine if s.max_steps})
            budget = "eval only" if not steps else str(steps[0]) if len(steps) == 1 else f"{steps[0]}-{steps[-1]}"
            rows.append([
                stage, model, ", ".join(ordered(s.task for s in mine)), "; ".join(ordered(s.series for s in mine)),
                budget, ", ".join(str(seed) for seed in ordered(s.seed for s in mine)), str(len(mine)),
            ])  # fmt: skip
    table = md_table(
        ["stage", "model", "tasks", "settings", "steps", "seeds", "runs"], rows, "---|---|---|---|---:|---:|---:|"
    )
    return (
        f"{table}\n\nEvery run: batch {BATCH_SIZE}, evaluation every {EVAL_STEPS} steps (and at the end) on the first "
        f"{MAX_EVAL_SAMPLES} validation examples."
    )


def floors(results: ResultSet) -> dict[str, dict[str, dict[str, float | None]]]:
    """model -> task -> majority-class floor and zero-shot score of the base model (same eval examples)."""
    table: dict[str, dict[str, dict[str, float | None]]] = {}
    for model, task in ordered((s.model, s.task) for s in results.grid):
        same = [r for r in results.found if (r.spec.model, r.spec.task) == (model, task)]
        zero_shot = [r.last for r in same if r.spec.stage == ZERO_SHOT]
        table.setdefault(model, {})[task] = {
            "majority": majority_floor(same),
            "zero_shot": zero_shot[0] if zero_shot else None,
        }
    return table


SUMMARY_KEYS = (
    "best",
    "final",
    "steps_to_90",
    "invalid_at_best",
    "top_class_at_best",
    "early_train_loss",
    "seconds_per_step",
)


def main_comparison(results: ResultSet, model: str, report: dict[str, Any]) -> None:
    """Per task and method (seeds of the second-seed stage merged), averages, stability, the seed table."""
    specs = [s for s in results.stage(MAIN) if s.model == model]
    tasks, methods = ordered(s.task for s in specs), ordered(s.series for s in specs)
    summaries = {t: {m: results.summary(model, t, m, (MAIN, SEED)) for m in methods} for t in tasks}
    report["series"].setdefault(model, {}).update(summaries)
    cell = {t: {m: summaries[t][m] or {} for m in methods} for t in tasks}
    best = {t: {m: cell[t][m].get("best") for m in methods} for t in tasks}
    stab = stability(best, methods)
    average = {m: {k: mean_or_none(cell[t][m].get(k) for t in tasks) for k in SUMMARY_KEYS} for m in methods}
    floor = report["floors"][model]
    floor_average = {k: mean_or_none(floor[t][k] for t in tasks) for k in ("majority", "zero_shot")}
    report.setdefault("stability", {})[model] = stab
    report.setdefault("average", {})[model] = {"methods": average, "floors": floor_average}

    tables = report["tables"]
    rows = [[t, fmt(floor[t]["majority"]), fmt(floor[t]["zero_shot"]), *(fmt(best[t][m]) for m in methods)]
            for t in tasks]  # fmt: skip
    rows.append(["**average**", fmt(floor_average["majority"]), fmt(floor_average["zero_shot"]),
                 *(fmt(average[m]["best"]) for m in methods)])  # fmt: skip
    tables[f"{model}-best"] = md_table(["task", "majority floor", "zero-shot", *methods], rows)
    tables[f"{model}-average"] = md_table(
        ["method", "best", "final", "steps to 90 % of best", f"train loss, steps 1-{EVAL_STEPS}", "invalid % at best",
         "std of z-scores", "s/step"],
        [[m, fmt(average[m]["best"]), fmt(average[m]["final"]), fmt(average[m]["steps_to_90"], 0),
          fmt(average[m]["early_train_loss"], 3), fmt(average[m]["invalid_at_best"]), fmt(stab["std_of_z"][m], 2),
          fmt(average[m]["seconds_per_step"], 2)]
         for m in methods],
    )  # fmt: skip

    detail = [
        [t, m, str(len(cell[t][m].get("seeds", []))), fmt(cell[t][m].get("best")), fmt(cell[t][m].get("final")),
         fmt(cell[t][m].get("steps_to_90"), 0), fmt(cell[t][m].get("early_train_loss"), 3),
         fmt(cell[t][m].get("invalid_at_best")), fmt(cell[t][m].get("top_class_at_best")),
         fmt(floor[t]["majority"]), fmt(floor[t]["zero_shot"])]
        for t in tasks
        for m in methods
    ]  # fmt: skip
    tables[f"{model}-detail"] = md_table(
        ["task", "method", "seeds", "best", "final", "steps to 90 % of best", f"train loss, steps 1-{EVAL_STEPS}",
         "invalid % at best", "top class % at best", "majority floor", "zero-shot"],
        detail,
        align="---|---|" + "---:|" * 9,
    )  # fmt: skip
    seed_specs = [s for s in results.stage(SEED) if s.model == model]
    if seed_specs:
        seeds = sorted({s.seed for s in specs} | {s.seed for s in seed_specs})
        rows = []
        for task, series in ordered((s.task, s.series) for s in seed_specs):
            per_seed = [results.summary(model, task, series, (MAIN, SEED), seed) or {} for seed in seeds]
            rows.append([task, series, *(fmt(s.get("best")) for s in per_seed)])
        header = ["task", "method", *(f"best, seed {s}" for s in seeds)]
        tables[f"{model}-seeds"] = md_table(header, rows, align="---|---|" + "---:|" * len(seeds))


def lr_check_section(results: ResultSet, report: dict[str, Any]) -> None:
    """Best score per (method, lr) on each check task, their mean, and the lr the runner uses."""
    specs = results.stage(LR_CHECK)
    tasks = ordered(s.task for s in specs)
    rows, data = [], {}
    for model, method in ordered((s.model, s.method) for s in specs):
        try:
            chosen: float | None = lr_from_check(model, method, results.grid, results.results_dir)
        except LrCheckError:
            chosen = None
        entry: dict[str, Any] = {"chosen": chosen, "by_lr": {}}
        for lr in ordered(s.lr for s in specs if (s.model, s.method) == (model, method)):
            run = {s.task: results.by_id[s.run_id] for s in specs if (s.model, s.method, s.lr) == (model, method, lr)}
            scores = [run[t].best if run.get(t) else None for t in tasks]
            entry["by_lr"][f"{lr:g}"] = {"best": dict(zip(tasks, scores, strict=True)), "mean": mean_or_none(scores)}
            mark = " (chosen)" if lr == chosen else ""
            rows.append([f"{model} {method}", f"{lr:g}{mark}", *(fmt(s) for s in scores), fmt(mean_or_none(scores))])
        data[f"{model}/{method}"] = entry
    report["lr_check"] = data
    if rows:
        header = ["run", "lr", *(f"{t} best" for t in tasks), "mean"]
        report["tables"]["lr-check"] = md_table(header, rows, align="---|---|" + "---:|" * (len(tasks) + 1))


def ablation_section(results: ResultSet, report: dict[str, Any]) -> None:
    """The ablation variants beside the main run of the same method, task and seed (best / final), one column
    per task and seed of the ablation stage (named by the task alone where each task has one seed)."""
    specs = results.stage(ABLATION)
    report["ablation"] = {}
    if not specs:
        return
    model, method = specs[0].model, specs[0].method
    cases = ordered((s.task, s.seed) for s in specs)
    one_seed = len({t for t, _ in cases}) == len(cases)
    columns = [t if one_seed else f"{t} seed {seed}" for t, seed in cases]
    main_m = SuperPosPromptConfig.__dataclass_fields__["m"].default if method == "superpos" else None
    named = [(f"{method}{f' m={main_m}' if main_m else ''} (main run)", method, (MAIN, SEED))]
    named += [(series, series, (ABLATION,)) for series in ordered(s.series for s in specs)]
    rows = []
    for label, series, stages in named:
        cells = [results.summary(model, t, series, stages, seed) or {} for t, seed in cases]
        best, final = [c.get("best") for c in cells], [c.get("final") for c in cells]
        report["ablation"][label] = {
            "best": dict(zip(columns, best, strict=True)),
            "final": dict(zip(columns, final, strict=True)),
        }
        rows.append(
            [label, *(f"{fmt(b)} / {fmt(f)}" for b, f in zip(best, final, strict=True)), fmt(mean_or_none(best))]
        )
    header = ["variant", *(f"{c} best / final" for c in columns), "mean best"]
    report["tables"]["ablation"] = md_table(header, rows)


def minilm_section(results: ResultSet, report: dict[str, Any]) -> None:
    """Best score per task of every MiniLM series (dropout off / on), beside the majority floor."""
    specs = results.stage(MINILM)
    if not specs:
        return
    model = specs[0].model
    tasks, variants = ordered(s.task for s in specs), ordered(s.series for s in specs)
    summaries = {t: {v: results.summary(model, t, v, (MINILM,)) for v in variants} for t in tasks}
    report["series"].setdefault(model, {}).update(summaries)
    best = {t: {v: (summaries[t][v] or {}).get("best") for v in variants} for t in tasks}
    majority = {t: report["floors"][model][t]["majority"] for t in tasks}
    report["minilm"] = {"best": best, "average": {v: mean_or_none(best[t][v] for t in tasks) for v in variants}}
    rows = [[t, fmt(majority[t]), *(fmt(best[t][v]) for v in variants)] for t in tasks]
    rows.append(["**average**", fmt(mean_or_none(majority.values())),
                 *(fmt(report["minilm"]["average"][v]) for v in variants)])  # fmt: skip
    report["tables"]["minilm"] = md_table(["task", "majority floor", *(f"{v} best" for v in variants)], rows)


# ----------------------------------------------------------------------------------------------------------
# Head to head: paired bootstrap over the saved per-example predictions
# ----------------------------------------------------------------------------------------------------------

BOOTSTRAP_RESAMPLES = 1000  # paired resamples of the eval examples (seed 0), the same for every comparison

#: A side of a comparison on one task: ((example ids, gold labels), its score on each resample).
Side = tuple[tuple[tuple[int, ...], tuple[int | float, ...]], np.ndarray]


@functools.cache
def resampled_file(path: Path, version: tuple[int, int], task: str) -> Side | None:
    """The examples of one predictions file and its score on each resample (cached per file ``version``: the
    suite refreshes the report after every run, and only new files cost time)."""
    saved = read_predictions(path, task)
    if saved is None:
        return None
    return (saved.ids, saved.golds), bootstrap_scores(task, saved.preds, saved.golds, resamples=BOOTSTRAP_RESAMPLES)


def resampled_runs(runs: Sequence[RunResult]) -> Side | None:
    """The runs' predictions at their best evaluation, scored on the resamples and averaged over the runs (the
    seeds of a series); None if a run has no predictions file or the runs' examples differ."""
    sides = []
    for run in runs:
        path = run.best_predictions
        if path is None or not path.is_file():
            return None
        stat = path.stat()
        sides.append(resampled_file(path, (stat.st_mtime_ns, stat.st_size), run.spec.task))
    if not sides or None in sides or len({examples for examples, _ in sides}) != 1:
        return None
    return sides[0][0], np.mean([scores for _, scores in sides], axis=0)


@functools.cache
def resampled_floor(task_name: str, golds: tuple[int | float, ...]) -> np.ndarray:
    """The score on each resample of the constant prediction that gives the majority floor."""
    constant = best_constant_prediction(get_task(task_name), golds)
    return bootstrap_scores(task_name, [constant] * len(golds), golds, resamples=BOOTSTRAP_RESAMPLES)


def paired(first: Side | None, second: Side | None, first_best: Any, second_best: Any) -> dict[str, Any] | None:
    """The difference of the best scores with its 95 % paired-bootstrap interval and verdict; None when a side
    has no predictions or the sides were evaluated on different examples."""
    if first is None or second is None or first[0] != second[0] or first_best is None or second_best is None:
        return None
    result = paired_difference(first[1], second[1], first_best - second_best)
    return {"difference": result.difference, "low": result.low, "high": result.high, "verdict": result.verdict}


def compare(
    label: str,
    first: Mapping[str, Mapping[str, Any]],
    second: Mapping[str, Mapping[str, Any]],
    differences: Mapping[str, dict[str, Any] | None],
    learned: Iterable[str],
) -> dict:
    """Head to head over the tasks where both sides have a best score: on how many tasks ``first`` is better,
    within noise or worse (:func:`paired` ``differences[task]``; untested: no predictions to test with), the
    mean best of each, the mean early train loss of each (where both have it) and the mean steps to 90 % of
    each over the ``learned`` tasks (both sides above the majority floor: at the floor, 90 % of the best is
    reached by chance). ``first[task]`` / ``second[task]`` are :func:`series_summary` dicts (a floor is
    ``{"best": value}``)."""
    tasks = [t for t in first if first[t].get("best") is not None and (second.get(t) or {}).get("best") is not None]
    verdicts = [(differences.get(t) or {}).get("verdict") for t in tasks]

    def both(key: str, over: Sequence[str]) -> tuple[float | None, float | None]:
        """Mean of ``key`` on each side over the tasks of ``over`` where both sides have it."""
        common = [t for t in over if first[t].get(key) is not None and second[t].get(key) is not None]
        return mean_or_none(first[t][key] for t in common), mean_or_none(second[t][key] for t in common)

    first_steps, second_steps = both("steps_to_90", [t for t in tasks if t in set(learned)])
    first_loss, second_loss = both("early_train_loss", tasks)
    return {
        "label": label,
        "tasks": tasks,
        "better": verdicts.count(BETTER),
        "within_noise": verdicts.count(WITHIN_NOISE),
        "worse": verdicts.count(WORSE),
        "untested": verdicts.count(None),
        "per_task": {t: differences.get(t) for t in tasks},
        "first_best": mean_or_none(first[t]["best"] for t in tasks),
        "second_best": mean_or_none(second[t]["best"] for t in tasks),
        "first_steps_to_90": first_steps,
        "second_steps_to_90": second_steps,
        "first_early_train_loss": first_loss,
        "second_early_train_loss": second_loss,
    }


#: What the head to head compares on one model: (model, stages, series, pairs as (label, first, second)).
Plan = tuple[str, tuple[str, ...], list[str], list[tuple[str, str, str]]]


def comparison_plans(results: ResultSet) -> list[Plan]:
    """On each model of the main stage the first method (SuperPos) against every other; on MiniLM, dropout off
    against on for each method."""
    plans: list[Plan] = []
    for model in ordered(s.model for s in results.stage(MAIN)):
        names = ordered(s.series for s in results.stage(MAIN) if s.model == model)
        pairs = [(f"{names[0]} vs {other}", names[0], other) for other in names[1:]]
        plans.append((model, (MAIN, SEED), names, pairs))
    for model in ordered(s.model for s in results.stage(MINILM)):
        specs = [s for s in results.stage(MINILM) if s.model == model]
        methods = ordered(s.method for s in specs)
        pairs = [(f"{m}, dropout off vs on", f"{m}, dropout off", f"{m}, dropout on") for m in methods]
        plans.append((model, (MINILM,), ordered(s.series for s in specs), pairs))
    return plans


def plan_comparisons(results: ResultSet, report: Mapping[str, Any], plan: Plan) -> tuple[list[dict], list[dict]]:
    """The :func:`compare` rows of one plan's pairs, and of each of its series against the majority floor."""
    model, stages, names, pairs = plan
    tasks = list(report["series"].get(model, {}))
    summary = {n: {t: report["series"][model][t].get(n) or {} for t in tasks} for n in names}
    side = {n: {t: resampled_runs(results.runs(model, t, n, stages)) for t in tasks} for n in names}
    majority = {t: report["floors"][model][t]["majority"] for t in tasks}
    floor_side: dict[str, Side | None] = {}
    for t in tasks:
        examples = next((side[n][t][0] for n in names if side[n][t] is not None), None)
        floor_side[t] = None if examples is None else (examples, resampled_floor(t, examples[1]))

    def differences(a: str, b: str) -> dict[str, dict[str, Any] | None]:
        return {t: paired(side[a][t], side[b][t], summary[a][t].get("best"), summary[b][t].get("best")) for t in tasks}

    above_floor = {n: {t: paired(side[n][t], floor_side[t], summary[n][t].get("best"), majority[t]) for t in tasks}
                   for n in names}  # fmt: skip
    learned = {n: {t for t, d in above_floor[n].items() if d and d["verdict"] == BETTER} for n in names}
    floor = {t: {"best": majority[t]} for t in tasks}
    pair_rows = [compare(f"{model}: {label}", summary[a], summary[b], differences(a, b), learned[a] & learned[b])
                 for label, a, b in pairs]  # fmt: skip
    floor_rows = [compare(f"{model}: {n} vs majority floor", summary[n], floor, above_floor[n], learned[n])
                  for n in names]  # fmt: skip
    return pair_rows, floor_rows


def head_to_head_section(results: ResultSet, report: dict[str, Any]) -> None:
    """The questions of issue 7 as generated comparisons (:func:`comparison_plans`, then every series against
    the majority floor), best scores with seeds merged, each task's difference tested by a paired bootstrap over
    the predictions of the best evaluations; per model, tables of the per-task differences."""
    rows = []
    for plan in comparison_plans(results):
        model, tasks = plan[0], list(report["series"].get(plan[0], {}))
        pair_rows, floor_rows = plan_comparisons(results, report, plan)
        report["tables"][f"{model}-pairs"] = differences_table(tasks, pair_rows, f"{model}: ")
        report["tables"][f"{model}-floor"] = differences_table(tasks, floor_rows, f"{model}: ", " vs majority floor")
        rows += pair_rows + floor_rows
    report["head_to_head"] = rows
    table_rows = [
        [r["label"], str(len(r["tasks"])),
         f"{r['better']} / {r['within_noise']} / {r['worse']}" + (f" ({r['untested']} untested)" * bool(r["untested"])),
         fmt(r["first_best"]), fmt(r["second_best"]),
         fmt(None if r["first_best"] is None else r["first_best"] - r["second_best"]),
         f"{fmt(r['first_steps_to_90'], 0)} / {fmt(r['second_steps_to_90'], 0)}",
         f"{fmt(r['first_early_train_loss'], 3)} / {fmt(r['second_early_train_loss'], 3)}"]
        for r in rows
    ]  # fmt: skip
    report["tables"]["head-to-head"] = md_table(
        ["comparison (first vs second)", "tasks", "first better / within noise / worse", "mean best, first",
         "mean best, second", "difference", "steps to 90 %, first / second (tasks both learn)",
         f"train loss, steps 1-{EVAL_STEPS}, first / second"],
        table_rows,
        align="---|" + "---:|" * 7,
    )  # fmt: skip


def differences_table(tasks: Sequence[str], rows: Sequence[Mapping[str, Any]], prefix: str, suffix: str = "") -> str:
    """Tasks down, comparisons across: each task's difference of best scores and its 95 % interval, in bold
    where the interval excludes 0."""

    def cell(entry: Mapping[str, Any] | None) -> str:
        if entry is None:
            return "—"
        text = f"{entry['difference']:+.1f}"
        text = text if entry["verdict"] == WITHIN_NOISE else f"**{text}**"
        return f"{text} ({entry['low']:+.1f} to {entry['high']:+.1f})"

    header = ["task", *(r["label"].removeprefix(prefix).removesuffix(suffix) for r in rows)]
    return md_table(header, [[t, *(cell(r["per_task"].get(t)) for r in rows)] for t in tasks])


def write_plots(report: Mapping[str, Any], folder: Path) -> list[Path]:
    """One PNG of learning curves per (model, task) with results (every series of ``report["series"]``, mean
    over seeds; floors dashed), plus an overview of all of them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = []
    for model, tasks in report["series"].items():
        for task, series in tasks.items():
            curves = {
                label + (f" ({len(s['seeds'])} seeds)" if len(s["seeds"]) > 1 else ""): s["curve"]
                for label, s in series.items()
                if s and s["curve"]["steps"]
            }
            if curves:
                panels.append((model, task, curves, report["floors"][model][task]))

    def draw(axis: Any, model: str, task: str, curves: Mapping[str, Any], floor: Mapping[str, Any]) -> None:
        for label, curve in curves.items():
            axis.plot(curve["steps"], curve["scores"], marker="o", markersize=3, label=label)
        for name, style in (("majority", "--"), ("zero_shot", ":")):
            if floor.get(name) is not None:
                axis.axhline(floor[name], linestyle=style, color="grey", label=f"{name.replace('_', '-')} floor")
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
        columns = min(4, len(panels))
        fig, axes = plt.subplots(math.ceil(len(panels) / columns), columns, figsize=(4 * columns, 3 * math.ceil(
            len(panels) / columns)), squeeze=False)  # fmt: skip
        for axis in axes.flat[len(panels) :]:
            axis.set_visible(False)
        for axis, panel in zip(axes.flat, panels, strict=False):
            draw(axis, *panel)
            axis.legend(fontsize=5)
        fig.tight_layout()
        written.append(save_figure(fig, folder / "overview.png"))
        plt.close(fig)
    return written


def save_figure(fig: Any, path: Path) -> Path:
    temporary = path.with_name(f".{path.stem}.tmp-{os.getpid()}.png")
    fig.savefig(temporary, dpi=90)
    os.replace(temporary, path)
    return path


#: Section titles of report.md, by table name (``{model}-<kind>`` for the per-model tables).
TABLE_TITLES = {
    "status": "Status",
    "grid": "The grid",
    "environments": "Where the finished runs computed (final.json's `environment`; older runs: not recorded)",
    "best": "{model}: best score per task, beside the majority-class and zero-shot floors of the same eval examples",
    "average": "{model}: average over the tasks; stability (std across tasks of each method's per-task z-score)",
    "detail": "{model}: per task and method",
    "seeds": "{model}: both seeds",
    "lr-check": "Learning-rate check (best score; the chosen lr has the highest mean, ties go to the paper's 1e-2)",
    "ablation": "SuperPos ablations: m and softmax (best / final score)",
    "minilm": "MiniLM (SEQ_CLS): backbone dropout off vs on (best score)",
    "head-to-head": "Head to head: best score per task (seeds merged) over the tasks both sides have finished; "
    "better / worse: the 95 % paired-bootstrap interval of the task's difference excludes 0",
    "pairs": "{model}: difference of best scores per task (95 % paired-bootstrap interval; bold: it excludes 0)",
    "floor": "{model}: each method above the majority floor per task (95 % paired-bootstrap interval; bold: it "
    "excludes 0)",
}


def table_title(name: str) -> str:
    if name in TABLE_TITLES:
        return TABLE_TITLES[name]
    model, kind = name.split("-", 1)
    return TABLE_TITLES[kind].format(model=model)


def report_markdown(report: Mapping[str, Any]) -> str:
    parts = [
        "# Quality suite report",
        "",
        "Generated by `python benchmarks/quality_suite.py report` from the results in this folder. Scores are "
        "the task's score (mean of its metrics, 0-100) on the first 300 validation examples; means over seeds "
        'where there are two; "—": not finished yet. Learning curves: `curves/`.',
    ]
    for name, table in report["tables"].items():
        parts += ["", f"## {table_title(name)}", "", table]
    return "\n".join(parts) + "\n"


def write_report(grid: Sequence[RunSpec], results_dir: Path, plots: bool = True) -> dict[str, Any]:
    """Write report.md, report.json (and the PNGs) into ``results_dir``; returns the report."""
    report = build_report(grid, results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(
        results_dir / "report.json", json.dumps(report, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    )
    atomic_write_text(results_dir / "report.md", report_markdown(report))
    if plots:
        write_plots(report, results_dir / CURVES_DIR)
    return report


def write_outputs(grid: Sequence[RunSpec], results_dir: Path, plots: bool) -> tuple[dict[str, Any], list[Path]]:
    """The report files and, for the default results folder, RESULTS.md; returns the report and the text files
    written."""
    report = write_report(grid, results_dir, plots=plots)
    paths = [results_dir / name for name in REPORT_FILES]
    if results_dir.resolve() == DEFAULT_RESULTS_DIR:
        import make_results

        paths.append(make_results.write_results())
    return report, paths


# ----------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the grid (niced); skips finished runs, resumes interrupted ones")
    run.add_argument("--runs-dir", type=Path, default=DEFAULT_RUNS_DIR, help="run folders (checkpoints)")
    run.add_argument("--results-dir", type=Path, default=DEFAULT_RESULTS_DIR, help="small results (committed)")
    run.add_argument("--data-dir", default=DEFAULT_DATA_DIR, help="task data (default: $PEFT_SUPERPOS_DATA_DIR "
                     "or ../shared/data)")  # fmt: skip
    run.add_argument("--only", action="append", metavar="GLOB", help="run ids to run, e.g. 'smollm2/sst2/*'")
    run.add_argument("--dry-run", action="store_true", help="print the runs in order with their status")
    run.add_argument("--commit", type=Path, metavar="REPO", help="commit each run's results in this git repo")
    report = commands.add_parser("report", help="tables and figures from the results folder")
    report.add_argument("--results-dir", type=Path, default=DEFAULT_RESULTS_DIR)
    report.add_argument("--no-plots", action="store_true")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "report":
        report, written = write_outputs(GRID_V1, args.results_dir, plots=not args.no_plots)
        print(report["tables"]["status"])
        print("wrote " + ", ".join(str(p) for p in written) + ("" if args.no_plots else f", {CURVES_DIR}/*.png"))
        return 0
    if args.dry_run:
        dry_run(GRID_V1, args.runs_dir, args.results_dir, args.only)
        return 0
    if not Path(args.data_dir).is_dir():
        print(f"--data-dir {args.data_dir} is not a folder (it needs glue/ and superglue/)", file=sys.stderr)
        return 2
    os.nice(10)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the current harness child too (finally)
    failed = run_suite(GRID_V1, args.runs_dir, args.results_dir, args.data_dir, args.only, commit_repo=args.commit)
    print(f"{len(failed)} runs failed" + (f": {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
