"""The paired bootstrap (peft_superpos.metrics.bootstrap): verdicts on clear and noisy differences, pairing of
separately computed resample scores, whole-question resampling for MultiRC, and its errors."""

from __future__ import annotations

import numpy as np
import pytest

from peft_superpos.metrics import Verdict, bootstrap_scores, compute_metrics, paired_bootstrap
from peft_superpos.metrics.bootstrap import paired_difference, resample_indices


def noisy_copy(golds: list[int], accuracy: float, seed: int) -> list[int]:
    """Binary predictions that are right on about ``accuracy`` of the examples."""
    rng = np.random.default_rng(seed)
    return [g if rng.random() < accuracy else 1 - g for g in golds]


GOLDS = np.random.default_rng(0).integers(0, 2, 300).tolist()


def test_identical_predictions_differ_by_nothing() -> None:
    preds = noisy_copy(GOLDS, 0.8, 1)
    result = paired_bootstrap("sst2", preds, list(preds), GOLDS, resamples=200)
    assert (result.difference, result.low, result.high, result.verdict) == (0.0, 0.0, 0.0, "within noise")


def test_a_clear_difference_is_better_one_way_and_worse_the_other() -> None:
    good, poor = noisy_copy(GOLDS, 0.9, 1), noisy_copy(GOLDS, 0.6, 2)
    ahead = paired_bootstrap("sst2", good, poor, GOLDS, resamples=300)
    behind = paired_bootstrap("sst2", poor, good, GOLDS, resamples=300)
    observed = compute_metrics("sst2", good, GOLDS)["score"] - compute_metrics("sst2", poor, GOLDS)["score"]
    assert ahead.difference == pytest.approx(observed) and observed > 20
    assert ahead.low < observed < ahead.high and ahead.verdict is Verdict.BETTER and ahead.verdict == "better"
    assert (behind.difference, behind.low, behind.high) == pytest.approx((-observed, -ahead.high, -ahead.low))
    assert behind.verdict is Verdict.WORSE


def test_one_point_on_100_examples_is_within_noise() -> None:
    golds = [0] * 55 + [1] * 45  # COPA-like: 100 examples, majority 55
    one_class = [0] * 100
    one_more = [0] * 55 + [1] + [0] * 44  # right on one more example: 56 against 55
    result = paired_bootstrap("copa", one_more, one_class, golds, resamples=500)
    assert result.difference == pytest.approx(1.0)
    assert result.verdict == "within noise" and result.low <= 0 < result.high


def test_resample_scores_are_paired_by_seed_and_match_compute_metrics() -> None:
    preds = noisy_copy(GOLDS, 0.7, 3)
    scores = bootstrap_scores("cola", preds, GOLDS, resamples=20, seed=5)
    assert scores.shape == (20,)
    assert np.array_equal(scores, bootstrap_scores("cola", preds, GOLDS, resamples=20, seed=5))
    assert not np.array_equal(scores, bootstrap_scores("cola", preds, GOLDS, resamples=20, seed=6))
    indices, _ = resample_indices(len(GOLDS), None, 20, 5)[7]
    assert scores[7] == compute_metrics("cola", [preds[i] for i in indices], [GOLDS[i] for i in indices])["score"]
    # scores computed separately and compared later give the same interval as paired_bootstrap
    other = noisy_copy(GOLDS, 0.75, 4)
    later = paired_difference(scores, bootstrap_scores("cola", other, GOLDS, resamples=20, seed=5), 1.0)
    at_once = paired_bootstrap("cola", preds, other, GOLDS, resamples=20, seed=5)
    assert (later.low, later.high) == (at_once.low, at_once.high)


def test_multirc_resamples_whole_questions() -> None:
    groups = ["q1"] * 3 + ["q2"] * 2 + ["q3"] * 4
    golds = [1, 0, 1, 0, 0, 1, 1, 0, 1]
    questions = {"q1": [0, 1, 2], "q2": [3, 4], "q3": [5, 6, 7, 8]}
    for indices, draw_groups in resample_indices(len(golds), groups, 50, 0):
        assert sorted(set(draw_groups)) == [0, 1, 2]  # three questions drawn
        for draw in range(3):  # the rows of each draw are exactly the rows of one question
            rows = [int(i) for i, g in zip(indices, draw_groups, strict=True) if g == draw]
            assert rows in questions.values()
    # questions 1 and 2 all right, question 3 wrong once: exact match of a resample is a multiple of 1/3
    preds = [1, 0, 1, 0, 0, 1, 1, 0, 0]
    ems = [compute_metrics("multirc", [preds[i] for i in ix], [golds[i] for i in ix], g)["em"]
           for ix, g in resample_indices(len(golds), groups, 50, 0)]  # fmt: skip
    assert set(np.round(ems, 6)) <= {0.0, 33.333333, 66.666667, 100.0}
    assert bootstrap_scores("multirc", preds, golds, groups, resamples=50).shape == (50,)


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="3 predictions but 2 references"):
        bootstrap_scores("sst2", [0, 1, 1], [0, 1])
    with pytest.raises(ValueError, match="resamples must be at least 1"):
        bootstrap_scores("sst2", [0, 1], [0, 1], resamples=0)
    with pytest.raises(ValueError, match="unpaired bootstrap scores"):
        paired_difference(np.zeros(10), np.zeros(11), 0.0)
    with pytest.raises(ValueError, match="confidence must be between 0 and 1"):
        paired_difference(np.zeros(10), np.zeros(10), 0.0, confidence=95)
