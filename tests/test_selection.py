"""Choosing settings honestly: the development split carved from the training file, SuperPos' init as a harness
setting, and the effective step every prompt run records."""

from __future__ import annotations

import datasets
import pytest
import torch
from tiny_models import harness_config, make_peft, make_superpos, make_tiny

from peft_superpos import expected_weight_l1
from peft_superpos.data import split_off_dev
from peft_superpos.harness import MethodSettings, RunConfigError, run_experiment
from peft_superpos.optim import embedding_rms, prompt_step_size


def numbered(count: int, group_size: int = 1) -> datasets.Dataset:
    values = {"source": [f"s{i}" for i in range(count)], "label": list(range(count))}
    if group_size > 1:
        values["group"] = [f"q{i // group_size}" for i in range(count)]
    return datasets.Dataset.from_dict(values)


def test_dev_split_is_disjoint_seeded_and_in_file_order():
    train, dev = split_off_dev(numbered(50), 10, seed=3)
    assert len(dev) == 10 and len(train) == 40
    assert set(dev["label"]).isdisjoint(train["label"]) and set(dev["label"]) | set(train["label"]) == set(range(50))
    assert dev["label"] == sorted(dev["label"]) and train["label"] == sorted(train["label"])
    assert split_off_dev(numbered(50), 10, seed=3)[1]["label"] == dev["label"]
    assert split_off_dev(numbered(50), 10, seed=4)[1]["label"] != dev["label"]


def test_dev_split_keeps_groups_whole():
    train, dev = split_off_dev(numbered(30, group_size=3), 7, seed=0)
    assert len(dev) == 9  # three whole groups: the third reaches 7
    assert set(dev["group"]).isdisjoint(train["group"])


def test_dev_split_must_leave_training_examples():
    with pytest.raises(ValueError, match="nothing to train on"):
        split_off_dev(numbered(5), 5, seed=0)


def test_eval_split_dev_needs_a_dev_size(llama, tmp_path):
    with pytest.raises(RunConfigError, match="--dev-size"):
        harness_config(llama, tmp_path, eval_split="dev")


def test_a_run_evaluates_on_its_dev_split_and_records_its_step(llama, tmp_path):
    settings = MethodSettings(num_virtual_tokens=3, m=8, weight_init="one_hot", lr=0.1)
    config = harness_config(llama, tmp_path, method_settings=settings, dev_size=2, eval_split="dev")
    final = run_experiment(config)
    assert final["data"]["eval_examples"] == 2 and final["data"]["train_examples"] == 4  # 6 CB fixture rows
    assert final["config"]["dev_size"] == 2 and final["config"]["dev_seed"] == 0
    assert final["peft_config"]["weight_init"] == "one_hot"
    step = final["step_size"]
    assert step["weight_l1"] == 1.0 and step["per_coordinate"] == step["lr"]
    assert step["relative"] == pytest.approx(step["per_coordinate"] / step["embedding_rms"])


def test_superpos_step_grows_with_the_l1_norm_of_its_weights():
    normal = prompt_step_size(make_superpos("llama", m=64), lr=0.01)
    assert normal["weight_l1"] == pytest.approx((2 / torch.pi) ** 0.5 * 64**0.5, rel=0.15)  # E|N(0, 1/m)| sums
    assert normal["per_coordinate"] == pytest.approx(0.01 * normal["weight_l1"])
    assert prompt_step_size(make_superpos("llama", m=64, use_softmax=True), lr=0.01)["weight_l1"] == pytest.approx(1)
    for settings in ({"m": 64}, {"m": 64, "weight_init": "uniform"}, {"m": 16, "weight_init": "one_hot"},
                     {"m": 64, "use_softmax": True}):  # fmt: skip
        model = make_superpos("llama", **settings)
        measured = prompt_step_size(model, lr=0.01)["weight_l1"]
        assert expected_weight_l1(model.peft_config["default"]) == pytest.approx(measured, rel=0.15), settings
    from peft import PromptTuningConfig

    stock = prompt_step_size(make_peft("llama", "CAUSAL_LM", PromptTuningConfig, num_virtual_tokens=4), lr=0.01)
    assert stock["weight_l1"] == 1.0 and stock["per_coordinate"] == 0.01


def test_embedding_rms_is_of_the_embeddings_the_model_sees():
    for family, scale in (("llama", 1.0), ("gemma3", 32**0.5)):
        embeddings = make_tiny(family).get_input_embeddings()
        raw = float(embeddings.weight.detach().double().pow(2).mean().sqrt())
        assert embedding_rms(embeddings, chunk=7) == pytest.approx(raw * scale, rel=1e-5)
