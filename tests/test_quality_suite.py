"""The quality suite's runner (benchmarks/quality_suite.py): the harness command, skip/resume/failure logic,
copying and committing results. Fake runners stand in for the harness except in one tiny end-to-end run through
the real CLI."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path

from quality_results import FakeHarness, option, write_predictions, write_run
from tiny_models import FIXTURE_DATA, tiny_model_dir

from benchmarks import quality_run_results
from benchmarks import quality_suite as qs
from benchmarks.quality_grid import ABLATION, MAIN, MINILM, ZERO_SHOT, RunSpec
from benchmarks.quality_predictions import harness_files, read_compact
from peft_superpos.harness.run_record import read_jsonl


def suite(tmp_path: Path, grid, runner, **kwargs) -> list[str]:
    return qs.run_suite(grid, tmp_path / "runs", tmp_path / "results", "data", runner=runner, **kwargs)


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
    assert copied == ["final.json", "metrics.jsonl", "predictions.jsonl.gz"]  # every evaluation in one file
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
    monkeypatch.setattr(quality_run_results, "PREDICTIONS_MAX_BYTES", 10)
    spec = RunSpec(MAIN, "smollm2", "cb", "lora", max_steps=100)
    suite(tmp_path, [spec], FakeHarness())
    assert sorted(p.name for p in (tmp_path / "results" / spec.run_id).iterdir()) == ["final.json", "metrics.jsonl"]


def test_the_copy_holds_every_evaluation_in_one_compressed_file(tmp_path):
    run_dir = tmp_path / "run"
    write_run(run_dir, {100: 50.0, 200: 60.0})
    for step in (100, 200):
        write_predictions(run_dir, step, "cb", [0, 1, 2], [0, None, step // 100])
    copied = qs.copy_results(run_dir, tmp_path / "results")
    assert [p.name for p in copied] == ["metrics.jsonl", "predictions.jsonl.gz", "final.json"]  # final.json last
    in_run_folder = {step: read_jsonl(path) for step, path in harness_files(run_dir).items()}
    assert list(in_run_folder) == [100, 200]
    assert read_compact(tmp_path / "results" / "predictions.jsonl.gz") == in_run_folder


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
    run_files = [f"{folder}/{ok.run_id}/{name}" for name in ("final.json", "metrics.jsonl", "predictions.jsonl.gz")]
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
