"""In-process tests of the harness: features, logits_to_keep, padding, every method, both eval modes,
repeatability and resuming (stock prompt tuning included)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from tiny_models import FIXTURE_DATA, adapted, harness_config

from peft_superpos.harness import (
    METHODS,
    MethodSettings,
    TextToTextCollator,
    TextToTextFeatures,
    read_rows,
    run_experiment,
)
from peft_superpos.harness.evaluation import generate_predictions, sequence_logprobs
from peft_superpos.harness.features import keep_for_labels
from peft_superpos.harness.task_trainer import TaskTrainer

_config = harness_config


def test_decoder_features_mask_everything_but_the_target(llama):
    model, tokenizer = adapted(_config(llama, "unused", method="full"))
    features = TextToTextFeatures(tokenizer, is_encoder_decoder=False, max_length=12)
    long = features.encode("cb hypothesis: " + "the train " * 20, "neutral")
    short = features.encode("cb hypothesis: x", "entailment")
    assert len(long["input_ids"]) == 12  # source truncated, target kept whole
    target = features.target_ids("neutral")
    assert target[-1] == tokenizer.eos_token_id and long["input_ids"][-len(target) :] == target
    assert long["labels"] == [-100] * (12 - len(target)) + target
    batch = TextToTextCollator(features.pad_id, False)([short, long])
    assert batch["input_ids"].shape == (2, 12)
    assert batch["attention_mask"][0, 0] == 0 and batch["attention_mask"][0, -1] == 1  # left padding
    first, keep = keep_for_labels(batch["labels"])
    assert keep == 12 - first + 1 and keep == len(target) + 1


def test_seq2seq_features(t5):
    _, tokenizer = adapted(_config(t5, "unused", method="full"))
    features = TextToTextFeatures(tokenizer, is_encoder_decoder=True, max_length=6)
    long = features.encode("cb hypothesis: " + "the train " * 20, "neutral")
    assert len(long["input_ids"]) == 6 and long["labels"][-1] == tokenizer.eos_token_id
    batch = TextToTextCollator(features.pad_id, True)([long, features.encode("cb x", "entailment")])
    assert batch["attention_mask"][1, 0] == 1 and batch["attention_mask"][1, -1] == 0  # right padding


def test_logits_to_keep_runs_the_lm_head_on_k_positions_only(llama, tmp_path):
    from transformers import TrainingArguments

    model, tokenizer = adapted(_config(llama, tmp_path, method="superpos"))
    features = TextToTextFeatures(tokenizer, is_encoder_decoder=False)
    rows = [("cb hypothesis: the train has left premise: I think so", "entailment"), ("cb x", "neutral")]
    batch = TextToTextCollator(features.pad_id, False)([features.encode(s, t) for s, t in rows])
    seen = []
    handle = model.get_base_model().lm_head.register_forward_hook(
        lambda m, i, o: seen.append((i[0].shape[1], i[0].is_contiguous()))
    )
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    trainer = TaskTrainer(model=model, args=args, task=None, features=features)
    loss = trainer.compute_loss(model, batch)
    _, keep = keep_for_labels(batch["labels"])
    length = batch["input_ids"].shape[1] + 3  # 3 virtual tokens in front
    assert seen == [(keep, True)] and keep < length  # contiguous: one matrix product, not a broadcast batched one
    # The same loss from the full logits (peft pads the labels for the virtual tokens itself).
    full = model(**batch).loss
    handle.remove()
    torch.testing.assert_close(loss, full, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_generation_runs_the_lm_head_on_the_last_position_contiguously(family, request, tmp_path):
    model, tokenizer = adapted(_config(request.getfixturevalue(family), tmp_path, method="superpos"))
    model.eval()
    features = TextToTextFeatures(tokenizer, is_encoder_decoder=False)
    seen = []
    handle = model.get_base_model().lm_head.register_forward_hook(
        lambda m, i, o: seen.append((tuple(i[0].shape), i[0].is_contiguous()))
    )
    sources = ["cb hypothesis: the train has left premise: I think so", "cb x"]
    texts = generate_predictions(model, features, sources, max_new_tokens=2, batch_size=2)
    handle.remove()
    assert len(texts) == 2 and seen and all(shape[:2] == (2, 1) and contiguous for shape, contiguous in seen)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("method", ["superpos", "lora"])
def test_left_padding_does_not_change_scores(family, method, request, tmp_path):
    path = request.getfixturevalue(family)
    model, tokenizer = adapted(_config(path, tmp_path, method=method))
    model.eval()
    features = TextToTextFeatures(tokenizer, is_encoder_decoder=False)
    short = features.encode("cb hypothesis: x", "neutral")
    long = features.encode("cb hypothesis: the train has already left premise: I think so", "entailment")
    collate = TextToTextCollator(features.pad_id, False)
    with torch.no_grad():
        alone = sequence_logprobs(model, collate([short]), False)
        padded = sequence_logprobs(model, collate([short, long]), False)
    torch.testing.assert_close(alone[0], padded[0], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_trains_and_evaluates(method, llama, tmp_path):
    final = run_experiment(_config(llama, tmp_path, method=method, eval_mode="rank"))
    assert final["method"] == method and final["global_step"] == 2
    assert final["trainable_parameters"] > 0
    assert final["final"]["eval_invalid_rate"] == 0.0  # rank classification never yields invalid labels
    assert final["final_train_loss"] is not None and final["hyperparameters"]["scheduler"] == "constant"
    if method == "full":
        assert final["trainable_parameters"] == final["total_parameters"]
    else:
        assert final["trainable_parameters"] < final["total_parameters"]


@pytest.mark.parametrize("mode", ["generate", "rank"])
def test_seq2seq_both_eval_modes(mode, t5, tmp_path):
    final = run_experiment(_config(t5, tmp_path, eval_mode=mode, task="rte"))
    row = final["final"]
    assert row["step"] == 2 and 0.0 <= row["eval_score"] <= 100.0 and "eval_accuracy" in row
    if mode == "rank":
        assert row["eval_invalid_rate"] == 0.0


def test_same_command_twice_gives_the_same_metrics(llama, tmp_path):
    keys = ("step", "train_loss", "eval_score", "eval_invalid_rate")
    results = []
    for name in ("a", "b"):
        run_experiment(_config(llama, tmp_path / name, max_steps=4, eval_steps=2))
        results.append([{k: r[k] for k in keys} for r in read_rows(tmp_path / name / "metrics.jsonl")])
    assert results[0] == results[1] and len(results[0]) == 2


@pytest.mark.parametrize("method", ["prompt_tuning", "superpos"])
def test_resume_continues_exactly(method, gpt2, tmp_path):
    """Stop after 2 steps, restart with 4: same rows and adapter as a run of 4 steps at once."""
    run_experiment(_config(gpt2, tmp_path / "whole", method=method, max_steps=4))
    run_experiment(_config(gpt2, tmp_path / "parts", method=method, max_steps=2))
    final = run_experiment(_config(gpt2, tmp_path / "parts", method=method, max_steps=4))
    assert final["resumed_from"].endswith("checkpoint-2") and final["session"] == 1
    whole = read_rows(tmp_path / "whole" / "metrics.jsonl")
    parts = read_rows(tmp_path / "parts" / "metrics.jsonl")
    assert [r["step"] for r in parts] == [2, 4]
    for a, b in zip(whole, parts, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["eval_score"] == pytest.approx(b["eval_score"])
    from safetensors.torch import load_file

    left = load_file(tmp_path / "whole" / "checkpoint-4" / "adapter_model.safetensors")
    right = load_file(tmp_path / "parts" / "checkpoint-4" / "adapter_model.safetensors")
    assert left.keys() == right.keys()
    for key in left:
        torch.testing.assert_close(left[key], right[key], rtol=1e-5, atol=1e-6)
    assert json.loads((tmp_path / "parts" / "final.json").read_text())["trainable_parameters"] > 0


def test_restart_into_another_runs_folder_is_refused(llama, tmp_path):
    from peft_superpos.harness import RunConfigError

    run_experiment(_config(llama, tmp_path, method="superpos"))
    with pytest.raises(RunConfigError, match="different run"):
        run_experiment(_config(llama, tmp_path, method="lora"))


def test_restarting_a_finished_run_trains_nothing(llama, tmp_path):
    """The same command again after the run finished reuses it: no extra step, no new rows or checkpoints."""
    first = run_experiment(_config(llama, tmp_path, max_steps=2, eval_steps=2))
    rows = (tmp_path / "metrics.jsonl").read_text()
    again = run_experiment(_config(llama, tmp_path, max_steps=2, eval_steps=2))
    assert again == first and again["global_step"] == 2
    assert (tmp_path / "metrics.jsonl").read_text() == rows
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-2"]


@pytest.mark.parametrize("family", ["llama", "t5"])
def test_loss_and_rank_scores_come_from_the_same_label_logits(family, request, tmp_path):
    """The training loss is the mean over label tokens of minus the log-likelihoods that rank scoring sums."""
    from transformers import TrainingArguments

    is_encoder_decoder = family == "t5"
    model, tokenizer = adapted(_config(request.getfixturevalue(family), tmp_path, method="superpos"))
    model.eval()
    features = TextToTextFeatures(tokenizer, is_encoder_decoder=is_encoder_decoder)
    rows = [("cb hypothesis: the train has left premise: I think so", "entailment"), ("cb x", "neutral")]
    batch = TextToTextCollator(features.pad_id, is_encoder_decoder)([features.encode(s, t) for s, t in rows])
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    trainer = TaskTrainer(model=model, args=args, task=None, features=features)
    with torch.no_grad():
        loss = trainer.compute_loss(model, batch)
        scores = sequence_logprobs(model, batch, is_encoder_decoder)
    tokens = sum(len(features.target_ids(t)) for _, t in rows)
    torch.testing.assert_close(loss, -scores.sum() / tokens, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_resumes_with_its_adapter_trainable(method, llama, tmp_path):
    first = run_experiment(_config(llama, tmp_path, method=method, eval_mode="rank"))
    resumed = run_experiment(_config(llama, tmp_path, method=method, eval_mode="rank", max_steps=3))
    assert resumed["resumed_from"].endswith("checkpoint-2") and resumed["global_step"] == 3
    assert resumed["trainable_parameters"] == first["trainable_parameters"] > 0


def test_resuming_into_a_frozen_adapter_is_an_error(llama, tmp_path, monkeypatch):
    """If loading a checkpoint ever froze trainable parameters, the run must stop, not train without them."""
    from transformers import Trainer

    run_experiment(_config(llama, tmp_path))
    load = Trainer._load_from_checkpoint

    def load_and_freeze(self, checkpoint, model=None):
        load(self, checkpoint, model)
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)

    monkeypatch.setattr(Trainer, "_load_from_checkpoint", load_and_freeze)
    with pytest.raises(RuntimeError, match="froze"):
        run_experiment(_config(llama, tmp_path, max_steps=3))


def test_a_new_method_is_one_entry(llama, tmp_path, monkeypatch):
    """One MethodSpec in METHODS is all a method needs: the CLI accepts it, the run trains it with its config
    class's defaults (plus the entry's), it counts as a prompt method, and the overhead benchmark lists it."""
    import sys

    from peft import PromptTuningConfig

    from peft_superpos.harness import MethodSpec
    from peft_superpos.harness.methods import METHODS as TABLE
    from peft_superpos.harness.methods import OPTIONS
    from peft_superpos.train import parse_run_config

    spec = MethodSpec(
        "short_prompt",
        "stock prompt tuning, 2 tokens",
        PromptTuningConfig,
        lr=1e-2,
        weight_decay=0.0,
        options=(OPTIONS["num_virtual_tokens"],),
        defaults={"num_virtual_tokens": 2},
    )
    monkeypatch.setitem(TABLE, spec.name, spec)
    assert spec.is_prompt_method and not TABLE["lora"].is_prompt_method and not TABLE["full"].is_prompt_method
    config = parse_run_config(["cb", "--method", "short-prompt", "--output-dir", str(tmp_path)])
    assert config.method == "short_prompt"
    final = run_experiment(_config(llama, tmp_path, method="short_prompt", method_settings=MethodSettings()))
    assert final["peft_config"]["num_virtual_tokens"] == 2 and final["global_step"] == 2
    monkeypatch.syspath_prepend(str(FIXTURE_DATA.parents[2] / "benchmarks"))
    sys.modules.pop("overhead", None)
    import overhead

    assert "short_prompt" in overhead.variants(4)


def test_method_defaults_come_from_the_config_classes():
    from peft import LoraConfig

    from peft_superpos import DePTConfig, ResidualPromptConfig, SuperPosPromptConfig

    def default(cls, name):
        return next(f.default for f in dataclasses.fields(cls) if f.name == name)

    assert METHODS["superpos"].default_value("m") == default(SuperPosPromptConfig, "m")
    assert METHODS["residual"].default_value("bottleneck_size") == default(ResidualPromptConfig, "bottleneck_size")
    assert METHODS["dept"].default_value("lora_lr") == default(DePTConfig, "lora_lr")
    assert METHODS["dept"].lr == default(DePTConfig, "prompt_lr")
    assert METHODS["lora"].default_value("r") == default(LoraConfig, "r")
