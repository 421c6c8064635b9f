"""The per-example predictions of the quality suite's results (benchmarks/quality_predictions.py): parsing, the
compact file (one compressed file per run holding every evaluation), and the conversion of results copied in the
harness's layout (one file per evaluation), which leaves the report unchanged."""

from __future__ import annotations

import shutil

from quality_results import write_predictions, write_run

from benchmarks import quality_report as qr
from benchmarks import quality_suite as qs
from benchmarks.quality_grid import MAIN, SEED, RunSpec
from benchmarks.quality_predictions import (
    COMPACT_FILE,
    SavedPredictions,
    compact_folder,
    harness_files,
    predictions_at,
    read_compact,
    read_evaluations,
)
from peft_superpos.metrics import compute_metrics


def test_saved_predictions_parse_label_words_and_invalid_outputs(tmp_path):
    write_predictions(tmp_path, 100, "sst2", [1, 1, 0], [1, None, 0])
    assert predictions_at(tmp_path, 100, "sst2") == SavedPredictions(ids=(0, 1, 2), golds=(1, 1, 0), preds=(1, None, 0))
    write_predictions(tmp_path, 200, "stsb", [3.4, 0.0], [2.0, None])
    saved = predictions_at(tmp_path, 200, "stsb")
    assert (saved.golds, saved.preds) == ((3.4, 0.0), (2.0, None))
    assert predictions_at(tmp_path, 300, "sst2") is None  # no evaluation saved at that step


def test_compacting_keeps_every_record_and_can_run_again(tmp_path):
    for step in (100, 200, 300):
        write_predictions(tmp_path, step, "cb", [0, 1, 2, 1], [0, None, step // 100 - 1, 1])
    before = read_evaluations(tmp_path)
    assert compact_folder(tmp_path) == tmp_path / COMPACT_FILE
    assert not (tmp_path / "predictions").exists() and harness_files(tmp_path) == {}
    assert read_evaluations(tmp_path) == read_compact(tmp_path / COMPACT_FILE) == before
    assert before[200][1] == {"id": 1, "gold": "contradiction", "pred": "invalid", "raw": ""}  # as the harness wrote it
    data = (tmp_path / COMPACT_FILE).read_bytes()
    assert compact_folder(tmp_path) is None and (tmp_path / COMPACT_FILE).read_bytes() == data  # nothing to do

    # a suite of an earlier version copies a longer run into the same folder, one file per evaluation: readers
    # take both, and compacting again folds the new files in (the same bytes for the same evaluations)
    write_predictions(tmp_path, 400, "cb", [0, 1, 2, 1], [0, 1, 2, 1])
    assert list(read_evaluations(tmp_path)) == [100, 200, 300, 400]
    assert predictions_at(tmp_path, 400, "cb").preds == (0, 1, 2, 1)
    compact_folder(tmp_path)
    assert list(read_compact(tmp_path / COMPACT_FILE)) == [100, 200, 300, 400] and harness_files(tmp_path) == {}


def test_the_report_is_the_same_from_either_layout(tmp_path):
    """A results folder in the harness's layout, then converted by ``compact``: report.md and report.json are
    byte-identical (bootstrap intervals, floors from the saved golds, invalid predictions included)."""
    old, new = tmp_path / "old", tmp_path / "new"
    grid = [RunSpec(MAIN, "smollm2", task, method, max_steps=200) for task in ("sst2", "cb")
            for method in ("superpos", "prompt_tuning")]  # fmt: skip
    grid.append(RunSpec(SEED, "smollm2", "sst2", "superpos", seed=7, max_steps=200))
    golds = {"sst2": [i % 2 for i in range(60)], "cb": [i % 3 for i in range(30)]}
    for index, spec in enumerate(grid):
        scores = {}
        for step in (100, 200):
            wrong = (7 * index + step // 10) % 13
            preds = [None if i == wrong else g if i % (index + 3) else (g + 1) % 2 for i, g in
                     enumerate(golds[spec.task])]  # fmt: skip
            scores[step] = compute_metrics(spec.task, preds, golds[spec.task])["score"]
            write_predictions(old / spec.run_id, step, spec.task, golds[spec.task], preds)
        write_run(old / spec.run_id, scores)
    shutil.copytree(old, new)
    assert qs.main(["compact", "--results-dir", str(new)]) == 0
    assert sorted(p.relative_to(new).as_posix() for p in new.rglob("*.jsonl*") if "predictions" in p.name) == sorted(
        f"{spec.run_id}/{COMPACT_FILE}" for spec in grid
    )
    reports = [qr.write_report(grid, folder, plots=False) for folder in (old, new)]
    assert reports[0]["head_to_head"][0]["per_task"]["sst2"] is not None  # the intervals come from the predictions
    for name in qr.REPORT_FILES:
        assert (old / name).read_bytes() == (new / name).read_bytes()
