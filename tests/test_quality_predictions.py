"""The per-example predictions of the quality suite's results (benchmarks/quality_predictions.py)."""

from __future__ import annotations

from quality_results import write_predictions

from benchmarks.quality_predictions import SavedPredictions, predictions_at


def test_saved_predictions_parse_label_words_and_invalid_outputs(tmp_path):
    write_predictions(tmp_path, 100, "sst2", [1, 1, 0], [1, None, 0])
    assert predictions_at(tmp_path, 100, "sst2") == SavedPredictions(ids=(0, 1, 2), golds=(1, 1, 0), preds=(1, None, 0))
    write_predictions(tmp_path, 200, "stsb", [3.4, 0.0], [2.0, None])
    saved = predictions_at(tmp_path, 200, "stsb")
    assert (saved.golds, saved.preds) == ((3.4, 0.0), (2.0, None))
    assert predictions_at(tmp_path, 300, "sst2") is None  # no evaluation saved at that step
