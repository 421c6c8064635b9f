"""Metrics against values computed by hand, and scoring of invalid predictions."""

from __future__ import annotations

import math

import pytest

from peft_superpos.data import TASKS, compute_metrics


def test_keys_per_task() -> None:
    expected = {
        "qqp": {"f1", "accuracy"},
        "mrpc": {"f1", "accuracy"},
        "cb": {"macro_f1", "accuracy"},
        "cola": {"mcc"},
        "stsb": {"pearson", "spearman"},
        "multirc": {"f1a", "em"},
    }
    for name, task in TASKS.items():
        refs = [1.0, 2.0, 3.0] if task.is_regression else [0, 1, 1]
        result = compute_metrics(name, refs, refs, groups=[0, 0, 1])
        assert set(result) == expected.get(name, {"accuracy"}) | {"score", "invalid_rate"}
        assert result["score"] == pytest.approx(100.0)
        assert result["invalid_rate"] == 0.0


def test_accuracy() -> None:
    result = compute_metrics("sst2", [0, 1, 0, 0], [0, 1, 1, 0])
    assert result == {"accuracy": 75.0, "score": 75.0, "invalid_rate": 0.0}


def test_binary_f1_and_accuracy() -> None:
    # TP = 2, FP = 1, FN = 1 -> P = R = 2/3, F1 = 2/3; 3 of 5 right.
    result = compute_metrics("mrpc", [1, 0, 1, 0, 1], [1, 1, 0, 0, 1])
    assert result["f1"] == pytest.approx(200 / 3)
    assert result["accuracy"] == pytest.approx(60.0)
    assert result["score"] == pytest.approx((200 / 3 + 60) / 2)


def test_invalid_binary_is_the_wrong_class() -> None:
    # None -> 1 - gold: [1, 1, 0, 0] vs gold [1, 0, 1, 0]: TP 1, FP 1, FN 1 -> F1 = 1/2.
    result = compute_metrics("qqp", [1, None, None, 0], [1, 0, 1, 0])
    assert result["f1"] == pytest.approx(50.0)
    assert result["accuracy"] == pytest.approx(50.0)
    assert result["invalid_rate"] == pytest.approx(50.0)
    # All invalid: nothing right, F1 = 0.
    result = compute_metrics("qqp", [None, None], [1, 0])
    assert result == {"f1": 0.0, "accuracy": 0.0, "score": 0.0, "invalid_rate": 100.0}


def test_mcc() -> None:
    # TP = 2, TN = 2, FP = 1, FN = 1: (2*2 - 1*1) / sqrt(3*3*3*3) = 1/3.
    result = compute_metrics("cola", [1, 1, 0, 0, 0, 1], [1, 1, 1, 0, 0, 0])
    assert result["mcc"] == pytest.approx(100 / 3)
    # Invalid -> opposite label: TP = TN = 0, FP = FN = 1: (0 - 1) / 1 = -1.
    assert compute_metrics("cola", [None, None], [1, 0])["mcc"] == pytest.approx(-100.0)


def test_cb_macro_f1_with_invalid() -> None:
    # None -> -1 (never gold). Per class: 0: P 1, R 1/2 -> 2/3; 1: P 2/3, R 1 -> 4/5; 2: P 1, R 1/2 -> 2/3.
    result = compute_metrics("cb", [0, 1, 1, 1, 2, None], [0, 0, 1, 1, 2, 2])
    assert result["macro_f1"] == pytest.approx(100 * (2 / 3 + 4 / 5 + 2 / 3) / 3)
    assert result["accuracy"] == pytest.approx(400 / 6)
    assert result["invalid_rate"] == pytest.approx(100 / 6)


def test_mnli_invalid_is_wrong() -> None:
    result = compute_metrics("mnli", [0, 1, 2, None], [0, 1, 2, 2])
    assert result["accuracy"] == pytest.approx(75.0)


def test_stsb_pearson_spearman() -> None:
    preds, refs = [1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 5.0]
    # Deviations from the means 2.5 and 2.75.
    dp = [-1.5, -0.5, 0.5, 1.5]
    dr = [-1.75, -0.75, 0.25, 2.25]
    pearson = sum(a * b for a, b in zip(dp, dr, strict=True)) / math.sqrt(
        sum(a * a for a in dp) * sum(b * b for b in dr)
    )
    assert pearson == pytest.approx(6.5 / math.sqrt(5 * 8.75))
    result = compute_metrics("stsb", preds, refs)
    assert result["pearson"] == pytest.approx(100 * pearson)
    assert result["pearson"] == pytest.approx(98.2708, abs=1e-3)
    assert result["spearman"] == pytest.approx(100.0)  # same ranking


def test_stsb_invalid_is_the_farthest_score() -> None:
    # None with gold 4.5 -> 0.0: preds [1, 2, 3, 0] rank [2, 3, 4, 1] vs [1, 2, 3, 4];
    # sum d^2 = 1 + 1 + 1 + 9 = 12; rho = 1 - 6 * 12 / (4 * (16 - 1)) = -0.2.
    result = compute_metrics("stsb", [1.0, 2.0, 3.0, None], [1.0, 2.0, 3.0, 4.5])
    assert result["spearman"] == pytest.approx(-20.0)
    assert result["invalid_rate"] == pytest.approx(25.0)
    # Gold below 2.5 -> 5.0: preds [5, 2, 3] vs [1, 2, 3]: ranks [3, 1, 2] vs [1, 2, 3], d^2 = 4 + 1 + 1;
    # rho = 1 - 6 * 6 / (3 * 8) = -0.5.
    assert compute_metrics("stsb", [None, 2.0, 3.0], [1.0, 2.0, 3.0])["spearman"] == pytest.approx(-50.0)


def test_stsb_constant_predictions_score_zero() -> None:
    result = compute_metrics("stsb", [2.0, 2.0, 2.0], [1.0, 2.0, 3.0])
    assert result == {"pearson": 0.0, "spearman": 0.0, "score": 0.0, "invalid_rate": 0.0}


def test_multirc_f1a_and_em() -> None:
    # None -> 1 - gold = 1 (a false positive). F1a: TP 2, FP 1, FN 1 -> 2/3.
    # EM: question "a" all right, "b" has a wrong answer, "c" has an invalid one -> 1/3.
    result = compute_metrics("multirc", [1, 0, 1, 0, None], [1, 0, 1, 1, 0], groups=["a", "a", "b", "b", "c"])
    assert result["f1a"] == pytest.approx(200 / 3)
    assert result["em"] == pytest.approx(100 / 3)
    assert result["score"] == pytest.approx(50.0)
    assert result["invalid_rate"] == pytest.approx(20.0)


def test_multirc_needs_groups() -> None:
    with pytest.raises(ValueError, match="group"):
        compute_metrics("multirc", [1, 0], [1, 0])


def test_input_checks() -> None:
    with pytest.raises(ValueError, match="2 predictions but 3 references"):
        compute_metrics("rte", [0, 1], [0, 1, 1])
    with pytest.raises(ValueError, match="no predictions"):
        compute_metrics("rte", [], [])
    with pytest.raises(ValueError, match="must be in 0..1, got 2"):
        compute_metrics("rte", [0, 2], [0, 1])
    with pytest.raises(ValueError, match="unknown task"):
        compute_metrics("nope", [0], [0])


def test_generation_pipeline() -> None:
    task = TASKS["rte"]
    texts = ["entailment", " Not_entailment", "maybe", "entailment"]
    preds = [task.parse_prediction(t) for t in texts]
    assert preds == [0, 1, None, 0]
    result = compute_metrics(task, preds, [0, 1, 0, 1])
    assert result["accuracy"] == pytest.approx(50.0)
    assert result["invalid_rate"] == pytest.approx(25.0)
