"""Metrics against values computed by hand, scoring of invalid predictions, the shipped ``evaluate`` module
(offline, the same numbers as the harness on every task) and the ``Trainer`` hook."""

from __future__ import annotations

import configparser
import math
import socket
from pathlib import Path

import evaluate
import numpy as np
import pytest
from tiny_models import word_level_tokenizer
from transformers import EvalPrediction

import peft_superpos.metrics
from peft_superpos.data import TASK_NAMES, TASKS
from peft_superpos.metrics import METRIC_PATH, compute_metrics, trainer_compute_metrics


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


def sklearn_metric(name: str, refs: list[int], filled: np.ndarray) -> float:
    """scikit-learn's value of a count-based metric (0..1), on predictions filled as the harness fills them."""
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

    if name == "accuracy":
        return accuracy_score(refs, filled)
    if name == "f1":
        return f1_score(refs, filled, pos_label=1, average="binary", zero_division=0.0)
    if name == "macro_f1":
        labels = sorted(set(refs) | {int(p) for p in filled if p >= 0})
        return f1_score(refs, filled, labels=labels, average="macro", zero_division=0.0)
    assert name == "mcc"
    return matthews_corrcoef(refs, filled)


@pytest.mark.parametrize("task_name", ["mrpc", "cola", "cb", "mnli"])
def test_counts_match_scikit_learn(task_name: str) -> None:
    """Accuracy, F1, macro-F1 and MCC from counts are scikit-learn's, invalid predictions and absent classes
    included."""
    task = TASKS[task_name]
    rng = np.random.default_rng(0)
    for size in (1, 2, 7, 300):
        for _ in range(20):
            refs = rng.integers(0, len(task.choices), size).tolist()
            preds = [None if rng.random() < 0.2 else int(p) for p in rng.integers(0, len(task.choices), size)]
            filled = peft_superpos.metrics.fill_invalid(task, preds, refs)
            result = compute_metrics(task, preds, refs)
            for name in task.metrics:
                expected = 100 * sklearn_metric(name, refs, filled)
                assert result[name] == pytest.approx(expected, abs=1e-9), (name, refs, preds)


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


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """No Hub and no network: offline flags set and every socket connection refused."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_EVALUATE_OFFLINE", "1")
    monkeypatch.setattr(evaluate.config, "HF_EVALUATE_OFFLINE", True)

    def refuse(*args, **kwargs):
        raise OSError("network access in an offline test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def _random_case(task_name: str, size: int = 40, seed: int = 0):
    """Predictions (about one in five invalid, ``None``), references and MultiRC groups for a task."""
    task = TASKS[task_name]
    rng = np.random.default_rng(seed)
    if task.is_regression:
        references = rng.uniform(0.0, 5.0, size).tolist()
        predictions = np.clip(np.asarray(references) + rng.normal(0.0, 1.0, size), 0.0, 5.0).tolist()
    else:
        references = rng.integers(0, len(task.choices), size).tolist()
        predictions = [
            r if keep else int(rng.integers(0, len(task.choices)))
            for r, keep in zip(references, rng.random(size) < 0.6, strict=True)
        ]
    predictions = [None if invalid else p for p, invalid in zip(predictions, rng.random(size) < 0.2, strict=True)]
    groups = [f"p{i // 6}-q{i // 3}" for i in range(size)] if task_name == "multirc" else None
    return predictions, references, groups


@pytest.mark.parametrize("task_name", TASK_NAMES)
def test_evaluate_module_matches_the_harness(task_name: str, offline: None) -> None:
    predictions, references, groups = _random_case(task_name)
    assert None in predictions
    expected = compute_metrics(task_name, predictions, references, groups)
    assert 0.0 < expected["invalid_rate"] < 100.0 and expected["score"] != 0.0
    extra = {} if groups is None else {"groups": groups}

    metric = evaluate.load(METRIC_PATH, task_name, keep_in_memory=True)
    assert metric.compute(predictions=predictions, references=references, **extra) == expected
    # The array form of invalid (-1 for classes, NaN for STS-B), added in two batches, gives the same numbers.
    sentinel = math.nan if TASKS[task_name].is_regression else -1
    array = np.array([sentinel if p is None else p for p in predictions])
    half = len(array) // 2
    metric.add_batch(predictions=array[:half], references=references[:half], **{k: v[:half] for k, v in extra.items()})
    metric.add_batch(predictions=array[half:], references=references[half:], **{k: v[half:] for k, v in extra.items()})
    assert metric.compute() == expected


def test_evaluate_module_loads_offline_without_writing_into_the_package(offline: None) -> None:
    package_dir = Path(peft_superpos.metrics.__file__).parent
    before = sorted(package_dir.rglob("*"))
    metric = evaluate.load(METRIC_PATH, "MRPC")  # task names as everywhere else: any case, "-" and "_" ignored
    assert metric.compute(predictions=[1, 0, None, 1], references=[1, 0, 1, 0]) == {
        "f1": 50.0,
        "accuracy": 50.0,
        "score": 50.0,
        "invalid_rate": 25.0,
    }
    assert sorted(package_dir.rglob("*")) == before


def test_evaluate_module_input_errors(offline: None) -> None:
    with pytest.raises(ValueError, match="unknown task 'default'.*config name"):
        evaluate.load(METRIC_PATH)
    metric = evaluate.load(METRIC_PATH, "rte", keep_in_memory=True)
    with pytest.raises(ValueError, match="must be in 0..1, got -2"):  # only -1 marks an invalid prediction
        metric.compute(predictions=[0, -2], references=[0, 1])
    with pytest.raises(ValueError, match="must be in 0..1, got -1"):  # references are never invalid
        metric.compute(predictions=[0, 1], references=[0, -1])


def test_metric_module_is_package_data() -> None:
    config = configparser.ConfigParser()
    config.read(Path(__file__).parents[1] / "setup.cfg")
    assert "evaluate" in config["options"]["install_requires"]
    patterns = config["options.package_data"]["peft_superpos.metrics"].split()
    package_dir = Path(peft_superpos.metrics.__file__).parent
    shipped = {path for pattern in patterns for path in package_dir.glob(pattern)}
    module_files = {path for path in Path(METRIC_PATH).rglob("*") if path.is_file() and "__pycache__" not in path.parts}
    assert Path(METRIC_PATH, "superpos_glue.py") in module_files
    assert module_files <= shipped


def _eval_prediction(tokenizer, generated: list[str], targets: list[str]) -> EvalPrediction:
    """Generated ids right-padded with pad (as generate does) and then -100 (as the Trainer's gathering does);
    label ids (target + eos) padded with -100."""

    def ids(texts: list[str], pad: list[int]) -> np.ndarray:
        rows = [tokenizer(t, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for t in texts]
        width = max(len(r) for r in rows) + len(pad)
        return np.array([r + pad + [-100] * (width - len(r) - len(pad)) for r in rows])

    return EvalPrediction(predictions=ids(generated, [tokenizer.pad_token_id]), label_ids=ids(targets, []))


def test_trainer_compute_metrics_with_invalid_generations() -> None:
    tokenizer = word_level_tokenizer(["<pad>", "</s>", "<unk>", "entailment", "contradiction", "neutral", "maybe"])
    generated = ["entailment", "neutral", "maybe", "", "contradiction neutral", "neutral"]
    targets = ["entailment", "neutral", "neutral", "contradiction", "contradiction", "entailment"]
    result = trainer_compute_metrics("cb", tokenizer)(_eval_prediction(tokenizer, generated, targets))
    # "maybe", "" and two label words are invalid: label ids [0, 2, None, None, None, 2] vs gold [0, 2, 2, 1, 1, 0].
    assert result == compute_metrics("cb", [0, 2, None, None, None, 2], [0, 2, 2, 1, 1, 0])
    assert result["accuracy"] == pytest.approx(100 / 3)
    assert result["invalid_rate"] == pytest.approx(50.0)


def test_trainer_compute_metrics_stsb_and_multirc() -> None:
    tokenizer = word_level_tokenizer(["<pad>", "</s>", "<unk>", "False", "True", "3.4", "1.0", "five"])
    stsb = trainer_compute_metrics("stsb", tokenizer)(
        _eval_prediction(tokenizer, ["3.4", "five", "1.0"], ["3.4", "1.0", "1.0"])
    )
    assert stsb == compute_metrics("stsb", [3.4, None, 1.0], [3.4, 1.0, 1.0])
    groups = ["a", "a", "b"]
    multirc = trainer_compute_metrics("multirc", tokenizer, groups)(
        _eval_prediction(tokenizer, ["True", "False", "five"], ["True", "False", "True"])
    )
    assert multirc == compute_metrics("multirc", [1, 0, None], [1, 0, 1], groups)
    assert multirc["em"] == pytest.approx(50.0)


def test_trainer_compute_metrics_errors() -> None:
    tokenizer = word_level_tokenizer(["<pad>", "</s>", "<unk>", "False", "True", "maybe"])
    with pytest.raises(ValueError, match="MultiRC needs groups"):
        trainer_compute_metrics("multirc", tokenizer)
    compute = trainer_compute_metrics("boolq", tokenizer)
    with pytest.raises(ValueError, match="labels of example 1 decode to 'maybe'"):
        compute(_eval_prediction(tokenizer, ["True", "True"], ["True", "maybe"]))
    logits = EvalPrediction(predictions=np.zeros((2, 3, 6), dtype=np.float32), label_ids=np.zeros((2, 3), dtype=int))
    with pytest.raises(ValueError, match="expected generated token ids.*predict_with_generate"):
        compute(logits)
