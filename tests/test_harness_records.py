"""What a run records besides its scores: length-grouped batches, per-example predictions and the
predicted-class distribution, truncation and throughput, the floors, eval-only runs, and the sequence-
classification path (the embedded MiniLM's) on a tiny BERT."""

from __future__ import annotations

import json
import random

import pytest
from tiny_models import FIXTURE_DATA, adapted, harness_config, read_jsonl

from peft_superpos.data import get_task, load_task_split
from peft_superpos.harness import run_experiment
from peft_superpos.harness.evaluation import evaluate
from peft_superpos.harness.features import TextToTextFeatures
from peft_superpos.harness.sampling import LengthGroupedSampler, padding_fraction
from peft_superpos.metrics import compute_metrics, constant_prediction_floor

_config = harness_config


def test_length_grouped_order_is_a_seeded_permutation_with_little_padding():
    rng = random.Random(0)
    lengths = [rng.randint(5, 200) for _ in range(1000)]
    sampler = LengthGroupedSampler(lengths, batch_size=8, seed=3)
    first = list(sampler)
    assert sorted(first) == list(range(1000))
    assert list(LengthGroupedSampler(lengths, batch_size=8, seed=3)) == first  # a new sampler: same order
    sampler.set_epoch(1)
    assert list(sampler) != first and sorted(sampler) == list(range(1000))
    sampler.set_epoch(0)
    assert list(sampler) == first  # depends on (seed, epoch) only, not on the global RNG
    assert list(LengthGroupedSampler(lengths, batch_size=8, seed=4)) != first
    randomly = padding_fraction(lengths, 8, random.Random(1).sample(range(1000), 1000))
    grouped = padding_fraction(lengths, 8, first)
    assert randomly > 0.3 and grouped < 0.05


def test_training_batches_are_length_grouped_and_counted(llama, tmp_path):
    grouped = run_experiment(_config(llama, tmp_path / "grouped", max_steps=6, eval_steps=6))
    plain = run_experiment(_config(llama, tmp_path / "plain", max_steps=6, eval_steps=6, group_by_length=False))
    g, p = grouped["throughput"], plain["throughput"]
    assert g["train_padding_fraction"] < p["train_padding_fraction"]
    assert g["train_tokens"] > 0 and g["train_tokens_per_s"] > 0 and g["eval_tokens_per_s"] > 0
    assert 0.0 <= g["eval_padding_fraction"] < 1.0
    assert grouped["config"]["group_by_length"] is True


def test_eval_batches_by_length_keep_dataset_order(llama, tmp_path):
    model, tokenizer = adapted(_config(llama, tmp_path, method="full"))
    task = get_task("cb")
    data = load_task_split(task, "validation", FIXTURE_DATA)
    features = TextToTextFeatures(tokenizer, False, 256)
    one = evaluate(model, features, task, data, mode="generate", batch_size=1)
    many = evaluate(model, features, task, data, mode="generate", batch_size=16)
    assert [r["pred"] for r in one.records] == [r["pred"] for r in many.records]
    assert [r["gold"] for r in many.records] == list(data["target"])
    assert [r["id"] for r in many.records] == list(range(len(data)))
    ranked = evaluate(model, features, task, data, mode="rank", batch_size=4)
    assert ranked.metrics["invalid_rate"] == 0 and all("raw" not in r for r in ranked.records)


def test_prediction_files_and_class_distribution(llama, tmp_path):
    final = run_experiment(_config(llama, tmp_path, max_steps=4, eval_steps=2))
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    task = get_task("cb")
    gold = list(load_task_split(task, "validation", FIXTURE_DATA)["target"])
    for row in rows:
        records = read_jsonl(tmp_path / "predictions" / f"step-{row['step']:06d}.jsonl")
        assert [r["gold"] for r in records] == gold
        counts = row["eval_pred_counts"]
        assert sum(counts.values()) == len(gold)
        assert counts == {w: n for w in (*task.choices, "invalid") if (n := sum(r["pred"] == w for r in records))}
        assert all(("raw" in r) == (r["pred"] == "invalid") for r in records)
        assert row["eval_majority_pred_share"] == pytest.approx(100 * max(counts.values()) / len(gold))
        labels = [task.choices.index(r["pred"]) if r["pred"] != "invalid" else None for r in records]
        expected = compute_metrics(task, labels, [task.choices.index(g) for g in gold])["score"]
        assert row["eval_score"] == pytest.approx(expected)
    assert final["final"]["step"] == 4


def test_truncation_is_counted(llama, tmp_path):
    final = run_experiment(_config(llama, tmp_path, max_length=12))
    data = final["data"]
    assert data["train_truncated"] > 0 and data["eval_truncated"] > 0
    roomy = run_experiment(_config(llama, tmp_path / "roomy"))["data"]
    assert roomy["train_truncated"] == 0 and roomy["eval_truncated"] == 0
    assert roomy["eval_examples"] == len(load_task_split("cb", "validation", FIXTURE_DATA))


def test_floors_and_eval_only(llama, tmp_path):
    task = get_task("cb")
    labels = list(load_task_split(task, "validation", FIXTURE_DATA)["label"])
    majority = max(compute_metrics(task, [c] * len(labels), labels)["score"] for c in range(3))
    assert constant_prediction_floor(task, labels) == pytest.approx(majority)
    zero = run_experiment(_config(llama, tmp_path / "zero", method="full", eval_only=True))
    assert zero["global_step"] == 0 and [r["step"] for r in read_jsonl(tmp_path / "zero" / "metrics.jsonl")] == [0]
    assert not list((tmp_path / "zero").glob("checkpoint-*"))
    assert zero["floors"]["majority"] == pytest.approx(majority)
    trained = run_experiment(_config(llama, tmp_path / "run", zero_shot_floor=True))
    assert trained["floors"]["zero_shot"] == pytest.approx(zero["final"]["eval_score"])
    saved = json.loads((tmp_path / "run" / "floors.json").read_text())
    assert saved["zero_shot"] == trained["floors"]["zero_shot"]


@pytest.mark.parametrize("method", ["superpos", "prompt_tuning"])
def test_sequence_classifier_path(bert, method, tmp_path):
    """An encoder-only model (saved as BertModel, like the embedded MiniLM) trains as SEQ_CLS: prompt plus a
    new classification head, class ids as labels, the same metrics, files and resume behaviour."""
    final = run_experiment(_config(bert, tmp_path, method=method, max_steps=4, eval_steps=2))
    assert final["eval_mode"] == "classify" and final["model_class"] == "BertForSequenceClassification"
    assert final["peft_config"]["task_type"] == "SEQ_CLS"
    assert final["final"]["eval_invalid_rate"] == 0 and final["final"]["step"] == 4
    assert read_jsonl(tmp_path / "predictions" / "step-000004.jsonl")[0]["pred"] in get_task("cb").choices
    assert "zero_shot" not in final["floors"]
    again = run_experiment(_config(bert, tmp_path, method=method, max_steps=4, eval_steps=2))
    assert again == final  # a finished run is reused


def test_sequence_classifier_regression(bert, tmp_path):
    final = run_experiment(_config(bert, tmp_path, task="stsb"))
    assert set(final["final"]) >= {"eval_pearson", "eval_spearman"} and final["final"]["eval_invalid_rate"] == 0


def test_classifier_rejects_generation_modes(bert, tmp_path):
    from peft_superpos.harness import RunConfigError

    with pytest.raises(RunConfigError, match="eval-mode generate"):
        run_experiment(_config(bert, tmp_path, eval_mode="generate"))
