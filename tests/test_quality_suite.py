"""The quality suite (benchmarks/quality_grid.py, quality_suite.py, quality_report.py): the grid, the runner's
skip/resume/failure logic, committing, the lr taken from the lr check, and the report's numbers on hand-made
results. Fake runners stand in for the harness except in one tiny end-to-end run through the real CLI."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from tiny_models import FIXTURE_DATA, REPO_ROOT, tiny_model_dir

from peft_superpos.data import get_task
from peft_superpos.harness import callbacks
from peft_superpos.metrics import compute_metrics

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
import quality_grid as qg  # noqa: E402
import quality_report as qr  # noqa: E402
import quality_suite as qs  # noqa: E402
from quality_grid import ABLATION, LR_CHECK, MAIN, MINILM, SEED, ZERO_SHOT, RunSpec  # noqa: E402


def write_run(
    folder: Path,
    scores: dict[int, float],
    invalid: float = 0.0,
    top_class: float = 50.0,
    losses: dict[int, float] | None = None,
    final_extra: dict | None = None,
) -> None:
    """A finished run as the harness leaves it: metrics.jsonl rows (train loss at the steps of ``losses``) and
    final.json at the last step."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = [
        {"step": step, "eval_score": score, "eval_invalid_rate": invalid, "eval_majority_pred_share": top_class}
        | ({"train_loss": losses[step]} if step in (losses or {}) else {})
        for step, score in scores.items()
    ]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    final = {"global_step": max(scores), "timings": {"train_steps_per_second": 0.5}, **(final_extra or {})}
    (folder / "final.json").write_text(json.dumps(final))


def write_predictions(
    folder: Path, step: int, task: str, golds: list[int | float], preds: list[int | float | None]
) -> None:
    """The per-example records of one evaluation as the harness writes them (label words; invalid: raw text)."""
    words = get_task(task).target_for
    records = [
        {"id": i, "gold": words(g), "pred": "invalid", "raw": ""} if p is None
        else {"id": i, "gold": words(g), "pred": words(p)}
        for i, (g, p) in enumerate(zip(golds, preds, strict=True))
    ]  # fmt: skip
    callbacks.write_predictions(folder, step, records)


def option(command: list[str], flag: str) -> str | None:
    return command[command.index(flag) + 1] if flag in command else None


class FakeHarness:
    """Stands in for the harness: per run id ``ok`` (writes a finished run), ``fail`` (exit 1) or ``kill``
    (leaves a checkpoint and half the rows, exit -9). Records every command."""

    def __init__(self, behaviour: dict[str, str] | None = None) -> None:
        self.behaviour = behaviour or {}
        self.commands: list[list[str]] = []

    def __call__(self, command, log_path: Path) -> int:
        command = list(command)
        self.commands.append(command)
        run_dir = Path(option(command, "--output-dir"))
        run_id = "/".join(run_dir.parts[-3:])
        steps = int(option(command, "--max-steps") or 0)
        what = self.behaviour.get(run_id, "ok")
        log_path.write_text(f"log of {run_id}\n" + ("Traceback: boom\n" if what == "fail" else ""))
        if what == "fail":
            return 1
        if what == "kill":
            (run_dir / "checkpoint-100").mkdir(parents=True, exist_ok=True)
            (run_dir / "metrics.jsonl").write_text(json.dumps({"step": 100, "eval_score": 10.0}) + "\n")
            return -9
        write_run(run_dir, {step: 10.0 + step / 100 for step in range(100, steps + 1, 100)} or {0: 5.0})
        (run_dir / "predictions-step100.jsonl").write_text(json.dumps({"id": 0, "gold": 1, "prediction": 1}) + "\n")
        return 0


def suite(tmp_path: Path, grid, runner, **kwargs) -> list[str]:
    return qs.run_suite(grid, tmp_path / "runs", tmp_path / "results", "data", runner=runner, **kwargs)


def test_grid_v1_order_and_contents():
    grid = qg.GRID_V1
    stages = [s.stage for s in grid]
    assert {stage: stages.count(stage) for stage in qg.STAGES} == {
        ZERO_SHOT: 7, LR_CHECK: 12, MAIN: 28, SEED: 8, ABLATION: 8, MINILM: 16
    }  # fmt: skip
    # the main stage's long tasks go last, after the ablation and the second seed
    blocks = [(stage, sorted({s.task for s in group})) for stage, group in
              itertools.groupby(grid, key=lambda s: s.stage)]  # fmt: skip
    assert [stage for stage, _ in blocks] == [ZERO_SHOT, MINILM, LR_CHECK, MAIN, ABLATION, SEED, MAIN]
    assert (blocks[3][1], blocks[6][1]) == (sorted(qg.SHORT_TASKS), ["cb", "mrpc", "rte"])
    assert [s.task for s in grid if s.stage == MAIN][::4] == ["sst2", "cola", "copa", "stsb", "mrpc", "rte", "cb"]
    assert all(s.eval_only and s.model == "smollm2" for s in grid if s.stage == ZERO_SHOT)
    tuned = [s for s in grid if s.stage in (MAIN, SEED, ABLATION) and s.method in qg.TUNED_METHODS]
    assert tuned and all(s.lr == qg.FROM_LR_CHECK for s in tuned)
    assert all(s.lr is None for s in grid if s.method in ("residual", "lora"))
    assert len({s.run_id for s in grid}) == len(grid)
    with pytest.raises(ValueError, match="share the id"):
        qg.check_grid([grid[0], grid[0]])


def test_harness_command_has_the_run_settings():
    spec = RunSpec(ABLATION, "smollm2", "cola", "superpos", seed=7, max_steps=300, m=16, softmax=True)
    command = qs.harness_command(spec, Path("runs/x"), "data", 0.03)
    assert command[1:5] == ["-m", "peft_superpos.train", "cola", "--data-dir"]
    pairs = {"--model": "smollm2-135m-instruct", "--method": "superpos", "--seed": "7", "--max-steps": "300",
             "--eval-steps": "100", "--max-eval-samples": "300", "--batch-size": "8", "--lr": "0.03", "--m": "16",
             "--output-dir": "runs/x"}  # fmt: skip
    assert {flag: option(command, flag) for flag in pairs} == pairs
    assert "--softmax" in command and "--disable-tqdm" in command and "--keep-dropout" not in command
    zero = qs.harness_command(RunSpec(ZERO_SHOT, "smollm2", "cb", "full", eval_only=True), Path("r"), "d", None)
    assert "--eval-only" in zero and option(zero, "--method") == "full"
    assert "--max-steps" not in zero and "--lr" not in zero
    dropout = RunSpec(MINILM, "minilm", "rte", "prompt_tuning", max_steps=500, keep_dropout=True)
    assert "--keep-dropout" in qs.harness_command(dropout, Path("r"), "d", None)
    assert dropout.run_name == "prompt_tuning-dropout-s42" and spec.run_name == "superpos-m16-softmax-s7"


def test_finished_runs_are_skipped_and_the_rest_run(tmp_path, capsys):
    done, raised, todo = (RunSpec(MAIN, "smollm2", task, "lora", max_steps=300) for task in ("sst2", "cola", "cb"))
    write_run(tmp_path / "results" / done.run_id, {100: 1.0, 200: 2.0, 300: 3.0})
    write_run(tmp_path / "results" / raised.run_id, {100: 1.0, 200: 2.0})  # budget raised from 200 to 300
    grid = [done, raised, todo]
    counts = qs.dry_run(grid, tmp_path / "runs", tmp_path / "results")
    assert counts == {"done": 1, "partial": 1, "todo": 1}
    assert "done    smollm2/sst2/lora-s42" in capsys.readouterr().out

    harness = FakeHarness()
    assert suite(tmp_path, grid, harness) == []
    assert [option(c, "--output-dir") for c in harness.commands] == [
        str(tmp_path / "runs" / spec.run_id) for spec in (raised, todo)
    ]
    for spec in grid:
        assert qs.run_status(spec, tmp_path / "runs", tmp_path / "results") == "done"
    copied = sorted(p.name for p in (tmp_path / "results" / todo.run_id).iterdir())
    assert copied == ["final.json", "metrics.jsonl", "predictions-step100.jsonl"]
    suite(tmp_path, grid, harness)
    assert len(harness.commands) == 2  # nothing left to run


def test_a_run_locked_by_another_process_is_left_alone(tmp_path):
    spec = RunSpec(MAIN, "smollm2", "cb", "lora", max_steps=100)
    harness = FakeHarness()
    with qs.run_lock(tmp_path / "runs" / spec.run_id) as locked:
        assert locked
        assert suite(tmp_path, [spec], harness) == []
    assert harness.commands == []
    suite(tmp_path, [spec], harness)
    assert len(harness.commands) == 1


def test_large_prediction_files_stay_behind(tmp_path, monkeypatch):
    monkeypatch.setattr(qs, "PREDICTIONS_MAX_BYTES", 10)
    spec = RunSpec(MAIN, "smollm2", "cb", "lora", max_steps=100)
    suite(tmp_path, [spec], FakeHarness())
    assert sorted(p.name for p in (tmp_path / "results" / spec.run_id).iterdir()) == ["final.json", "metrics.jsonl"]


def test_interrupted_run_restarts_with_the_same_command_and_a_failure_does_not_stop_the_grid(tmp_path):
    killed, failing, fine = (RunSpec(MAIN, "smollm2", task, "lora", max_steps=200) for task in ("sst2", "cola", "cb"))
    grid = [killed, failing, fine]
    first = FakeHarness({killed.run_id: "kill", failing.run_id: "fail"})
    assert suite(tmp_path, grid, first) == [killed.run_id, failing.run_id]
    assert qs.run_status(killed, tmp_path / "runs", tmp_path / "results") == "partial"
    assert qs.run_status(failing, tmp_path / "runs", tmp_path / "results") == "todo"
    assert qs.run_status(fine, tmp_path / "runs", tmp_path / "results") == "done"
    failures = [json.loads(line) for line in (tmp_path / "results" / "failures.jsonl").read_text().splitlines()]
    assert [f["run_id"] for f in failures] == [killed.run_id, failing.run_id]
    assert "boom" in failures[1]["log_tail"] and failures[1]["reason"] == "exit code 1"

    second = FakeHarness()
    assert suite(tmp_path, grid, second) == []
    assert second.commands == first.commands[:2]  # the same commands: the harness resumes from its checkpoint
    assert qs.run_status(killed, tmp_path / "runs", tmp_path / "results") == "done"


def test_a_run_that_exits_0_short_of_its_steps_is_a_failure(tmp_path):
    spec = RunSpec(MAIN, "smollm2", "cb", "lora", max_steps=300)

    def stops_early(command, log_path):
        log_path.write_text("")
        write_run(Path(option(list(command), "--output-dir")), {100: 1.0})
        return 0

    assert suite(tmp_path, [spec], stops_early) == [spec.run_id]
    assert not (tmp_path / "results" / spec.run_id / "final.json").exists()


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout


def new_repo(repo: Path) -> Path:
    """An empty git repository with a committer identity."""
    repo.mkdir()
    git(repo, "init", "-q")
    git(repo, "config", "user.email", "suite@example.com")
    git(repo, "config", "user.name", "suite")
    return repo


def test_commit_commits_only_the_result_paths(tmp_path):
    repo = new_repo(tmp_path / "repo")
    (repo / "tracked.txt").write_text("v1\n")
    git(repo, "add", "tracked.txt")
    git(repo, "commit", "-q", "-m", "init")
    (repo / "tracked.txt").write_text("v2, not to be committed\n")
    (repo / "staged.txt").write_text("staged by someone else\n")
    git(repo, "add", "staged.txt")

    ok, bad = (
        RunSpec(MAIN, "smollm2", "cb", "lora", max_steps=100),
        RunSpec(MAIN, "smollm2", "rte", "lora", max_steps=100),
    )
    results = repo / "benchmarks" / "results" / "quality"
    harness = FakeHarness({bad.run_id: "fail"})
    qs.run_suite([ok, bad], tmp_path / "runs", results, "data", runner=harness, commit_repo=repo)

    log = git(repo, "log", "--format=%s").splitlines()
    assert log == [f"quality: failed {bad.run_id}", f"quality: {ok.run_id}", "init"]
    folder = "benchmarks/results/quality"
    reports = [f"{folder}/report.json", f"{folder}/report.md"]  # refreshed with every run, so they stay consistent
    run_files = [
        f"{folder}/{ok.run_id}/{name}" for name in ("final.json", "metrics.jsonl", "predictions-step100.jsonl")
    ]
    assert sorted(git(repo, "show", "--name-only", "--format=", "HEAD~1").split()) == sorted(run_files + reports)
    assert sorted(git(repo, "show", "--name-only", "--format=", "HEAD").split()) == [
        f"{folder}/failures.jsonl",
        *reports,
    ]
    assert "1 of 2 planned runs finished" in git(repo, "show", f"HEAD:{folder}/report.md")
    assert git(repo, "diff", "--cached", "--name-only").split() == ["staged.txt"]  # still staged, not committed
    assert git(repo, "diff", "--name-only").split() == ["tracked.txt"]
    assert not qs.git_commit(repo, [results / ok.run_id / "final.json"], "nothing new")  # no empty commit

    # a suite killed after copying a run's results but before committing them: the next suite commits them
    lost = RunSpec(MAIN, "smollm2", "mrpc", "lora", max_steps=100)
    write_run(results / lost.run_id, {100: 1.0})
    (results / lost.run_id / ".metrics.jsonl.tmp-123").write_text("")  # left by a kill during a copy
    qs.run_suite([ok, lost], tmp_path / "runs", results, "data", runner=harness, commit_repo=repo)
    assert git(repo, "log", "-1", "--format=%s").strip() == "quality: results left uncommitted by an earlier suite"
    assert sorted(git(repo, "show", "--name-only", "--format=", "HEAD").split()) == [
        f"{folder}/{lost.run_id}/final.json", f"{folder}/{lost.run_id}/metrics.jsonl"
    ]  # fmt: skip
    assert len(harness.commands) == 2 and git(repo, "diff", "--cached", "--name-only").split() == ["staged.txt"]


def test_paths_whose_commit_failed_are_committed_with_the_next(monkeypatch):
    calls = []

    def flaky_commit(repo, paths, message):
        calls.append((list(paths), message))
        if len(calls) == 1:
            raise qs.CommitError("cannot do a partial commit during a merge")
        return True

    monkeypatch.setattr(qs, "git_commit", flaky_commit)
    committer = qs.ResultCommitter(Path("repo"))
    committer.commit([Path("a/final.json"), Path("report.md")], "quality: a")
    committer.commit([Path("b/final.json"), Path("report.md")], "quality: b")
    assert calls[1] == ([Path("a/final.json"), Path("report.md"), Path("b/final.json")], "quality: b")
    assert committer.pending == []


def test_commit_waits_for_another_process_holding_the_index_lock(tmp_path):
    repo = new_repo(tmp_path / "repo")
    (repo / "a.json").write_text("{}")
    lock = repo / ".git" / "index.lock"
    lock.write_text("")
    threading.Timer(0.5, lock.unlink).start()
    start = time.perf_counter()
    assert qs.git_commit(repo, [repo / "a.json"], "quality: a", wait_s=0.2)
    assert time.perf_counter() - start >= 0.4
    assert git(repo, "log", "--format=%s").split("\n")[0] == "quality: a"


def lr_check_grid(model: str = "smollm2") -> list[RunSpec]:
    return [
        RunSpec(LR_CHECK, model, task, "superpos", max_steps=300, lr=lr)
        for task in ("sst2", "cola")
        for lr in qg.LR_CHECK_VALUES
    ]


def write_lr_check(results: Path, best: dict[tuple[str, float], float]) -> None:
    for spec in lr_check_grid():
        write_run(results / spec.run_id, {100: 0.0, 200: best[spec.task, spec.lr], 300: 0.0})


def test_lr_comes_from_the_lr_check(tmp_path):
    results = tmp_path / "results"
    main = RunSpec(MAIN, "smollm2", "rte", "superpos", max_steps=100, lr=qg.FROM_LR_CHECK)
    grid = [*lr_check_grid(), main]
    # mean over the two tasks: 3e-3 -> 50, 1e-2 -> 55, 3e-2 -> 60 (the best on neither task alone wins)
    write_lr_check(results, {("sst2", 3e-3): 70, ("cola", 3e-3): 30, ("sst2", 1e-2): 80, ("cola", 1e-2): 30,
                             ("sst2", 3e-2): 75, ("cola", 3e-2): 45})  # fmt: skip
    assert qg.lr_check_means("smollm2", "superpos", grid, results) == {3e-3: 50.0, 1e-2: 55.0, 3e-2: 60.0}
    assert qg.resolve_lr(main, grid, results) == 3e-2
    harness = FakeHarness()
    qs.run_suite(grid, tmp_path / "runs", results, "data", only=[main.run_id], runner=harness)
    assert option(harness.commands[0], "--lr") == "0.03"

    write_lr_check(results, {("sst2", 3e-3): 60, ("cola", 3e-3): 50, ("sst2", 1e-2): 50, ("cola", 1e-2): 60,
                             ("sst2", 3e-2): 40, ("cola", 3e-2): 70})  # fmt: skip
    assert qg.resolve_lr(main, grid, results) == qg.PAPER_LR  # a tie goes to the paper's lr


def test_lr_check_missing_fails_loudly_and_the_grid_goes_on(tmp_path):
    results = tmp_path / "results"
    tuned = RunSpec(MAIN, "smollm2", "rte", "superpos", max_steps=100, lr=qg.FROM_LR_CHECK)
    other = RunSpec(MAIN, "smollm2", "rte", "lora", max_steps=100)
    grid = [*lr_check_grid(), tuned, other]
    for spec in lr_check_grid()[:5]:  # one lr-check run missing
        write_run(results / spec.run_id, {300: 50.0})
    with pytest.raises(qg.LrCheckError, match="smollm2/cola/lrcheck-superpos-lr0.03-s42"):
        qg.resolve_lr(tuned, grid, results)
    harness = FakeHarness()
    failed = qs.run_suite(grid, tmp_path / "runs", results, "data", only=["*/rte/*"], runner=harness)
    assert failed == [tuned.run_id]
    assert [option(c, "--method") for c in harness.commands] == ["lora"]
    failure = json.loads((results / "failures.jsonl").read_text())
    assert "lr check" in failure["reason"] and "missing" in failure["reason"]
    with pytest.raises(qg.LrCheckError, match="no lr-check runs"):
        qg.resolve_lr(tuned, [tuned], results)


def report_grid() -> list[RunSpec]:
    grid = [RunSpec(ZERO_SHOT, "smollm2", task, "full", eval_only=True) for task in ("sst2", "cb", "rte")]
    grid += [
        RunSpec(MAIN, "smollm2", task, method, max_steps=400)
        for task in ("sst2", "cb", "rte")
        for method in ("superpos", "prompt_tuning", "residual")
    ]
    grid.append(RunSpec(SEED, "smollm2", "sst2", "superpos", seed=7, max_steps=400))
    grid += [RunSpec(ABLATION, "smollm2", "sst2", "superpos", max_steps=400, m=16)]
    grid += [RunSpec(MINILM, "minilm", "sst2", "superpos", max_steps=400, keep_dropout=k) for k in (False, True)]
    return grid


def test_report_numbers_on_a_partial_results_tree(tmp_path):
    results = tmp_path / "results"
    grid = report_grid()

    def put(run_id: str, scores: dict[int, float], **kwargs) -> Path:
        assert run_id in {spec.run_id for spec in grid}
        write_run(results / run_id, scores, **kwargs)
        return results / run_id

    put("smollm2/sst2/zero-shot", {0: 30.0}, final_extra={"floors": {"majority": 51.0}})
    put("smollm2/sst2/superpos-s42", {100: 66.0, 200: 75.0, 300: 80.0, 400: 78.0}, invalid=2.0, losses={100: 0.6})
    put("smollm2/sst2/superpos-s7", {100: 72.0, 200: 80.0, 300: 80.0, 400: 80.0}, top_class=100.0, losses={100: 0.4})
    put("smollm2/sst2/prompt_tuning-s42", {100: 60.0, 400: 55.0}, losses={100: 0.9, 400: 0.1})
    environment = {"device": "cpu: X", "torch_threads": 2, "torch": "2.13", "transformers": "5.23", "peft": "0.21"}
    put("smollm2/sst2/residual-s42", {100: 70.0, 400: 70.0}, final_extra={"environment": environment})
    cb = put("smollm2/cb/superpos-s42", {100: 50.0, 400: 50.0})
    # gold labels of the CB eval examples: predicting class 0 everywhere gives accuracy 60, macro-F1 25 -> 42.5
    write_predictions(cb, 100, "cb", [0, 0, 0, 1, 2], [0, 0, 0, 0, 0])
    put("smollm2/cb/prompt_tuning-s42", {100: 50.0, 400: 40.0}, losses={100: 1.5})  # superpos has none on cb
    put("smollm2/cb/residual-s42", {100: 80.0, 400: 80.0})
    put("smollm2/rte/superpos-s42", {100: 50.0, 200: 60.0})  # short of its 400 steps: not finished
    put("smollm2/sst2/superpos-m16-s42", {100: 40.0, 400: 60.0})
    put("minilm/sst2/superpos-dropout-s42", {100: -5.0, 400: -1.0})
    put("minilm/sst2/superpos-s42", {100: 0.0, 400: -3.0})

    report = qr.build_report(grid, results)
    assert (report["finished"], report["planned"]) == (11, len(grid))
    assert report["tables"]["status"].startswith(f"11 of {len(grid)} planned runs finished")
    environments = report["tables"]["environments"].splitlines()
    assert environments[2:] == ["| not recorded | not recorded | not recorded | not recorded | not recorded | 10 |",
                                "| cpu: X | 2 | 2.13 | 5.23 | 0.21 | 1 |"]  # fmt: skip
    assert (
        "| main | smollm2 | sst2, cb, rte | superpos; prompt_tuning; residual | 400 | 42 | 9 |"
        in (report["tables"]["grid"])
    )
    assert report["floors"]["smollm2"]["sst2"] == {"majority": 51.0, "zero_shot": 30.0}
    assert report["floors"]["smollm2"]["cb"] == {"majority": pytest.approx(42.5), "zero_shot": None}
    assert report["floors"]["smollm2"]["rte"] == {"majority": None, "zero_shot": None}

    superpos = report["series"]["smollm2"]["sst2"]["superpos"]
    assert superpos["seeds"] == [42, 7]
    assert superpos["best"] == 80.0 and superpos["final"] == 79.0
    assert superpos["steps_to_90"] == 150.0  # 90 % of 80 = 72: step 200 (seed 42: 66 < 72) and step 100 (seed 7: 72)
    assert superpos["invalid_at_best"] == 1.0
    assert superpos["top_class_at_best"] == 75.0  # seed 42: 50 %, seed 7: one class for all
    assert superpos["early_train_loss"] == pytest.approx(0.5)  # mean train loss of steps 1-100, mean over seeds
    assert superpos["first_eval"] == 69.0  # the score at step 100, mean over seeds
    assert superpos["curve"] == {
        "steps": [100, 200, 300, 400],
        "scores": [69.0, 77.5, 80.0, 79.0],
        "low": [66.0, 75.0, 80.0, 78.0],
        "high": [72.0, 80.0, 80.0, 80.0],
    }
    assert report["series"]["smollm2"]["rte"]["superpos"] is None

    # per task z-scores across methods: sst2 (80, 60, 70) -> (1.2247, -1.2247, 0); cb (50, 50, 80) -> (-0.7071,
    # -0.7071, 1.4142); std across the two tasks: |difference| / 2. rte has no results and is left out.
    stability = report["stability"]["smollm2"]
    assert stability["tasks"] == ["sst2", "cb"]
    assert stability["std_of_z"] == pytest.approx({"superpos": 0.96593, "prompt_tuning": 0.25882, "residual": 0.70711},
                                                  abs=1e-5)  # fmt: skip
    assert report["average"]["smollm2"]["methods"]["superpos"]["best"] is None  # rte missing
    best_table = report["tables"]["smollm2-best"]
    assert "| sst2 | 51.0 | 30.0 | 80.0 | 60.0 | 70.0 |" in best_table
    assert "| cb | 42.5 | — | 50.0 | 50.0 | 80.0 |" in best_table
    assert "| rte | — | — | — | — | — |" in best_table
    detail = report["tables"]["smollm2-detail"]
    assert "| sst2 | superpos | 2 | 80.0 | 79.0 | 150 | 0.500 | 1.0 | 75.0 | 51.0 | 30.0 |" in detail
    assert "| cb | superpos | 1 | 50.0 | 50.0 | 100 | — | 0.0 | 50.0 | 42.5 | — |" in detail
    assert "| sst2 | superpos | 80.0 | 80.0 |" in report["tables"]["smollm2-seeds"]
    assert report["ablation"]["superpos m=128 (main run)"]["best"] == {"sst2": 80.0}  # seed 42 only
    assert report["ablation"]["superpos m=16"]["final"] == {"sst2": 60.0}
    assert report["minilm"]["best"]["sst2"] == {"superpos, dropout off": 0.0, "superpos, dropout on": -1.0}
    assert "| sst2 | — | 0.0 | -1.0 |" in report["tables"]["minilm"]
    minilm = report["series"]["minilm"]["sst2"]
    assert minilm["superpos, dropout off"]["steps_to_90"] == 100  # best 0 (e.g. MCC of a collapse): reached at once
    assert minilm["superpos, dropout on"]["steps_to_90"] is None  # 90 % of a negative best means nothing

    # head to head over the tasks both sides finished (rte: neither); with no predictions to test a task's
    # difference on (only superpos on cb saved any) every task is untested and none counts as learned
    head = {row["label"]: row for row in report["head_to_head"]}
    versus_pt = head["smollm2: superpos vs prompt_tuning"]
    assert versus_pt["tasks"] == ["sst2", "cb"]
    assert [versus_pt[k] for k in ("better", "within_noise", "worse", "untested")] == [0, 0, 0, 2]
    assert versus_pt["per_task"] == {"sst2": None, "cb": None}
    assert (versus_pt["first_best"], versus_pt["second_best"]) == (65.0, 55.0)
    assert (versus_pt["first_steps_to_90"], versus_pt["second_steps_to_90"]) == (None, None)
    # early train loss over the tasks where both sides have it: sst2 only (superpos logged none on cb)
    assert (versus_pt["first_early_train_loss"], versus_pt["second_early_train_loss"]) == pytest.approx((0.5, 0.9))
    versus_floor = head["smollm2: superpos vs majority floor"]
    assert (versus_floor["first_best"], versus_floor["second_best"]) == (65.0, 46.75)
    # cb: the saved predictions are the constant of the floor itself, so the difference is exactly 0
    assert versus_floor["per_task"]["cb"] == {"difference": 7.5, "low": 0.0, "high": 0.0, "verdict": "within noise"}
    dropout = head["minilm: superpos, dropout off vs on"]
    assert (dropout["tasks"], dropout["first_best"], dropout["second_best"]) == (["sst2"], 0.0, -1.0)
    assert (
        "| smollm2: superpos vs residual | 2 | 0 / 0 / 0 (2 untested) | 0 / 0 / 0 (2 untested) | 65.0 | 75.0 | -10.0 "
        "| — / — | — / — |" in (report["tables"]["head-to-head"])
    )
    assert "| cb | +7.5 (+0.0 to +0.0) | — | — |" in report["tables"]["smollm2-floor"]

    qr.write_report(grid, results)
    assert (results / "report.md").read_text().startswith("# Quality suite report")
    assert json.loads((results / "report.json").read_text())["stability"]["smollm2"]["tasks"] == ["sst2", "cb"]
    pictures = sorted(p.name for p in (results / "curves").iterdir())
    assert pictures == ["minilm-sst2.png", "overview.png", "smollm2-cb.png", "smollm2-sst2.png"]


def test_ablation_at_two_seeds_sits_beside_the_main_run_of_each_seed(tmp_path):
    results = tmp_path / "results"
    grid = [
        RunSpec(MAIN, "smollm2", "sst2", "superpos", max_steps=400),
        RunSpec(SEED, "smollm2", "sst2", "superpos", seed=7, max_steps=400),
        *(RunSpec(ABLATION, "smollm2", "sst2", "superpos", seed=seed, max_steps=400, m=16) for seed in (42, 7)),
    ]
    for spec, scores in zip(grid, ({100: 80.0, 400: 78.0}, {100: 84.0, 400: 84.0}, {100: 70.0, 400: 76.0},
                                   {100: 72.0, 400: 70.0}), strict=True):  # fmt: skip
        write_run(results / spec.run_id, scores)
    # predictions at the best evaluations of seed 42 (200 examples, the first 160 / 152 right); none for seed 7
    golds = [i % 2 for i in range(200)]
    for spec, (step, right) in zip(grid[::2], ((100, 160), (400, 152)), strict=True):
        write_predictions(results / spec.run_id, step, "sst2", golds, [g if i < right else 1 - g
                                                                      for i, g in enumerate(golds)])  # fmt: skip
    report = qr.build_report(grid, results)
    assert report["ablation"]["superpos m=16"]["best"] == {"sst2 seed 42": 76.0, "sst2 seed 7": 72.0}
    table = report["tables"]["ablation"]
    assert "| variant | sst2 seed 42 best / final | sst2 seed 7 best / final | mean best |" in table
    assert "| superpos m=128 (main run) | 80.0 / 78.0 | 84.0 / 84.0 | 82.0 |" in table
    assert "| superpos m=16 | 76.0 / 76.0 | 72.0 / 70.0 | 74.0 |" in table
    # the variant against the main run of its seed: 8 examples fewer right at seed 42, untested at seed 7
    versus_main = report["ablation"]["superpos m=16"]["versus_main"]
    assert versus_main["sst2 seed 42"]["verdict"] == "worse" and versus_main["sst2 seed 42"]["difference"] == -4.0
    assert versus_main["sst2 seed 7"] is None and "versus_main" not in report["ablation"]["superpos m=128 (main run)"]
    differences = report["tables"]["ablation-differences"].splitlines()
    assert differences[0] == "| task | superpos m=16 |" and differences[3] == "| sst2 seed 7 | — |"
    assert differences[2].startswith("| sst2 seed 42 | **-4.0** (")


def test_head_to_head_speed_counts_only_tasks_both_sides_learn():
    first = {"a": {"best": 80.0, "steps_to_90": 100}, "b": {"best": 50.0, "steps_to_90": 300},
             "c": {"best": 90.0, "steps_to_90": 400}}  # fmt: skip
    second = {"a": {"best": 70.0, "steps_to_90": 200}, "b": {"best": 60.0, "steps_to_90": 100},
              "c": {"best": 90.0, "steps_to_90": 100}}  # fmt: skip
    verdicts = {"a": "better", "b": "worse", "c": "within noise"}
    differences = {t: {"difference": 0.0, "low": 0.0, "high": 0.0, "verdict": v} for t, v in verdicts.items()}
    # only a is learned by both sides (b: first is at its majority floor, where 90 % of the best is reached by
    # chance; c: not above the floor either)
    row = qr.compare("x", first, second, differences, {"a"})
    assert row["tasks"] == ["a", "b", "c"]
    assert [row[k] for k in ("better", "within_noise", "worse", "untested")] == [1, 1, 1, 0]
    assert (row["first_steps_to_90"], row["second_steps_to_90"]) == (100, 200)


def test_head_to_head_tests_each_task_on_the_saved_predictions(tmp_path):
    """SST-2: SuperPos (two seeds) right on about 90 % at step 100 against prompt tuning's 55 % (65 % at its best,
    step 200): better at both, both above the floor. COPA: one example more than the floor (56 against 55 on 100):
    within noise, not learned."""
    results = tmp_path / "results"
    grid = [RunSpec(MAIN, "smollm2", task, method, max_steps=200) for task in ("sst2", "copa")
            for method in ("superpos", "prompt_tuning")]  # fmt: skip
    grid.append(RunSpec(SEED, "smollm2", "sst2", "superpos", seed=7, max_steps=200))
    golds = {"sst2": [i % 2 for i in range(200)], "copa": [0] * 55 + [1] * 45}

    def put(spec: RunSpec, right: dict[int, int]) -> None:
        """A run whose evaluation at step s gets the first ``right[s]`` examples right (predictions saved)."""
        scores = {}
        for step, count in right.items():
            preds = [g if i < count else 1 - g for i, g in enumerate(golds[spec.task])]
            scores[step] = compute_metrics(spec.task, preds, golds[spec.task])["score"]
            write_predictions(results / spec.run_id, step, spec.task, golds[spec.task], preds)
        write_run(results / spec.run_id, scores)

    superpos, prompt_tuning, copa_superpos, copa_prompt_tuning, superpos_7 = grid
    put(superpos, {100: 180, 200: 178})
    put(superpos_7, {100: 176, 200: 170})
    put(prompt_tuning, {100: 110, 200: 130})
    put(copa_superpos, {100: 55, 200: 56})
    put(copa_prompt_tuning, {100: 55, 200: 55})
    report = qr.build_report(grid, results)
    head = {row["label"]: row for row in report["head_to_head"]}
    versus_pt = head["smollm2: superpos vs prompt_tuning"]
    assert [versus_pt[k] for k in ("better", "within_noise", "worse", "untested")] == [1, 1, 0, 0]
    sst2 = versus_pt["per_task"]["sst2"]
    assert sst2["difference"] == pytest.approx(89.0 - 65.0) and sst2["low"] > 15 and sst2["verdict"] == "better"
    copa = versus_pt["per_task"]["copa"]
    # the sides differ on one example only: a resample without it differs by 0, so 0 is in the interval
    assert copa["difference"] == pytest.approx(1.0) and copa["low"] == 0.0 < copa["high"]
    assert (versus_pt["first_steps_to_90"], versus_pt["second_steps_to_90"]) == (100, 200)  # sst2 only
    # at the first evaluation: 89 against 55 on SST-2; the same predictions on COPA
    first_eval = versus_pt["first_eval"]
    assert [first_eval[k] for k in ("better", "within_noise", "worse", "untested")] == [1, 1, 0, 0]
    assert first_eval["per_task"]["sst2"]["difference"] == pytest.approx(89.0 - 55.0)
    assert first_eval["per_task"]["copa"] == {"difference": 0.0, "low": 0.0, "high": 0.0, "verdict": "within noise"}
    floor = head["smollm2: superpos vs majority floor"]
    assert [floor[k] for k in ("better", "within_noise", "worse")] == [1, 1, 0] and floor["first_eval"] is None
    assert head["smollm2: prompt_tuning vs majority floor"]["per_task"]["copa"]["high"] == 0.0  # the floor itself
    assert f"| sst2 | **+24.0** ({sst2['low']:+.1f} to {sst2['high']:+.1f}) |" in report["tables"]["smollm2-pairs"]
    assert "| copa | +1.0 (" in report["tables"]["smollm2-pairs"]
    assert "| copa | +0.0 (+0.0 to +0.0) |" in report["tables"]["smollm2-pairs-first-eval"]
    assert (
        "| smollm2: superpos vs prompt_tuning | 2 | 1 / 1 / 0 | 1 / 1 / 0 | 72.5 | 60.0 |"
        in (report["tables"]["head-to-head"])
    )

    # a run without its predictions file, or evaluated on other examples, leaves the task untested
    (results / copa_prompt_tuning.run_id / "predictions" / "step-000100.jsonl").unlink()  # its best (the first)
    write_predictions(results / superpos_7.run_id, 100, "sst2", golds["sst2"][:100], golds["sst2"][:100])
    head = {row["label"]: row for row in qr.build_report(grid, results)["head_to_head"]}
    assert head["smollm2: superpos vs prompt_tuning"]["untested"] == 2
    assert head["smollm2: superpos vs prompt_tuning"]["first_eval"]["untested"] == 2


def test_second_seed_against_the_main_seed_and_each_seed_head_to_head(tmp_path):
    """SST-2, 200 examples: SuperPos right on 180 at seed 42 and 150 at seed 7 (a training-seed difference far
    outside the eval-example interval), prompt tuning on 130 at seed 42; its seed-7 run is not finished."""
    results = tmp_path / "results"
    grid = [RunSpec(MAIN, "smollm2", "sst2", method, max_steps=200) for method in ("superpos", "prompt_tuning")]
    grid += [
        RunSpec(SEED, "smollm2", "sst2", method, seed=7, max_steps=200) for method in ("superpos", "prompt_tuning")
    ]
    golds = [i % 2 for i in range(200)]
    for spec, right in zip(grid[:3], ({100: 170, 200: 180}, {100: 110, 200: 130}, {100: 150, 200: 140}), strict=True):
        for step, count in right.items():
            write_predictions(results / spec.run_id, step, "sst2", golds,
                              [g if i < count else 1 - g for i, g in enumerate(golds)])  # fmt: skip
        write_run(results / spec.run_id, {step: count / 2 for step, count in right.items()})
    report = qr.build_report(grid, results)

    seeds = report["seeds"]["smollm2"]["series"]
    assert seeds["sst2/superpos"]["best"] == {42: 90.0, 7: 75.0}
    spread = seeds["sst2/superpos"]["versus_main_seed"][7]
    assert spread["difference"] == -15.0 and spread["verdict"] == "worse" and spread["high"] < -5
    assert seeds["sst2/prompt_tuning"] == {"best": {42: 65.0, 7: None}, "versus_main_seed": {7: None}}
    table = report["tables"]["smollm2-seeds"].splitlines()
    assert table[0] == "| task | method | best, seed 42 | best, seed 7 | seed 7 - seed 42 |"
    assert table[2].startswith("| sst2 | superpos | 90.0 | 75.0 | **-15.0** (")
    assert table[3] == "| sst2 | prompt_tuning | 65.0 | — | — |"

    pairs = report["tables"]["smollm2-seed-pairs"].splitlines()
    assert pairs[0] == "| task | superpos vs prompt_tuning | superpos vs prompt_tuning, step 100 |"
    assert pairs[2].startswith("| sst2 seed 42 | **+25.0** (") and "| **+30.0** (" in pairs[2]
    assert pairs[3] == "| sst2 seed 7 | — | — |"


def test_early_train_loss_is_the_first_full_window_only(tmp_path):
    spec = RunSpec(MAIN, "smollm2", "sst2", "superpos", max_steps=400)

    def result(rows: list[dict]) -> qg.RunResult:
        return qg.RunResult(spec, {}, rows, tmp_path)

    assert result([{"step": 100, "train_loss": 0.7}, {"step": 200, "train_loss": 0.2}]).early_train_loss == 0.7
    # a row averaged over fewer steps (resumed from a checkpoint of an older version) is not the same measure
    assert result([{"step": 100, "train_loss": 0.7, "train_loss_partial": True}]).early_train_loss is None
    assert result([{"step": 50, "train_loss": 0.7}, {"step": 150, "train_loss": 0.2}]).early_train_loss is None


def test_predictions_files_parse_label_words_and_invalid_outputs(tmp_path):
    write_predictions(tmp_path, 100, "sst2", [1, 1, 0], [1, None, 0])
    saved = qr.read_predictions(tmp_path / "predictions" / "step-000100.jsonl", "sst2")
    assert saved == qr.SavedPredictions(ids=(0, 1, 2), golds=(1, 1, 0), preds=(1, None, 0))
    write_predictions(tmp_path, 200, "stsb", [3.4, 0.0], [2.0, None])
    saved = qr.read_predictions(tmp_path / "predictions" / "step-000200.jsonl", "stsb")
    assert (saved.golds, saved.preds) == ((3.4, 0.0), (2.0, None))
    assert qr.read_predictions(tmp_path / "predictions" / "step-000300.jsonl", "sst2") is None  # missing


def test_report_lr_check_table_marks_the_chosen_lr(tmp_path):
    results = tmp_path / "results"
    write_lr_check(results, {("sst2", 3e-3): 70, ("cola", 3e-3): 30, ("sst2", 1e-2): 80, ("cola", 1e-2): 30,
                             ("sst2", 3e-2): 75, ("cola", 3e-2): 45})  # fmt: skip
    report = qr.build_report(lr_check_grid(), results)
    assert report["lr_check"]["smollm2/superpos"]["chosen"] == 3e-2
    assert "| smollm2 superpos | 0.03 (chosen) | 75.0 | 45.0 | 60.0 |" in report["tables"]["lr-check"]


def test_one_run_through_the_real_harness_cli(tmp_path, tmp_path_factory):
    model = tiny_model_dir(tmp_path_factory, "llama")
    spec = RunSpec(MAIN, "tiny", "cb", "prompt_tuning", max_steps=2, eval_steps=1)
    run = dict(runs_dir=tmp_path / "runs", results_dir=tmp_path / "results", data_dir=str(FIXTURE_DATA))
    assert qs.run_suite([spec], **run, models={"tiny": str(model)}) == [], (
        tmp_path / "runs" / spec.run_id / "log.txt"
    ).read_text()[-3000:]
    rows = [
        json.loads(line) for line in (tmp_path / "results" / spec.run_id / "metrics.jsonl").read_text().splitlines()
    ]
    assert [row["step"] for row in rows] == [1, 2]
    assert json.loads((tmp_path / "results" / spec.run_id / "final.json").read_text())["global_step"] == 2
    assert "peft_superpos.train cb" in (tmp_path / "runs" / spec.run_id / "log.txt").read_text()

    def must_not_run(command, log_path):
        raise AssertionError("a finished run was started again")

    assert qs.run_suite([spec], **run, runner=must_not_run) == []
