"""``disable_dropout`` on every tiny architecture; ``make_param_groups`` alone and inside a Trainer run."""

from __future__ import annotations

import pytest
import torch
from tiny_models import (
    ALL_FAMILIES,
    DROPOUT,
    default_task,
    labels_for,
    make_superpos,
    make_tiny,
    tiny_batch,
)
from torch import nn

import peft_superpos  # noqa: F401  (registers the method)
from peft_superpos import disable_dropout, make_param_groups

DropoutNd = nn.modules.dropout._DropoutNd

# dropout probabilities each tiny config sets (tiny_models sets 0.1 wherever the architecture has one)
CONFIG_DROPOUTS = {
    "gpt2": {"resid_pdrop", "embd_pdrop", "attn_pdrop"},
    "llama": {"attention_dropout"},
    "qwen2": {"attention_dropout"},
    "mistral": {"attention_dropout"},
    "opt": {"dropout", "attention_dropout"},
    "bloom": {"hidden_dropout", "attention_dropout"},
    "t5": {"dropout_rate"},
    "bart": {"dropout", "attention_dropout", "activation_dropout"},
    "bert": {"hidden_dropout_prob", "attention_probs_dropout_prob"},
    "roberta": {"hidden_dropout_prob", "attention_probs_dropout_prob"},
}


def forward_inputs(family):
    task = default_task(family)
    input_ids, attention_mask = tiny_batch(family)
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
    if task == "SEQ_2_SEQ_LM":
        inputs["labels"] = labels_for(task, input_ids, attention_mask)
    return inputs


def two_train_forwards(model, family):
    """Logits of two identical forwards in train mode (different RNG draws)."""
    model.train()
    inputs = forward_inputs(family)
    with torch.no_grad():
        return model(**inputs).logits, model(**inputs).logits


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_disable_dropout(family):
    model = make_tiny(family)
    first, second = two_train_forwards(model, family)
    assert not torch.equal(first, second)  # dropout 0.1 is active in train mode

    changes = disable_dropout(model)
    first, second = two_train_forwards(model, family)
    assert torch.equal(first, second)
    # every change is reported as "where: old -> 0.0", and includes the config fields
    assert changes and all(change.endswith(f"{DROPOUT} -> 0.0") for change in changes)
    for field in CONFIG_DROPOUTS[family]:
        assert f"config.{field}: {DROPOUT} -> 0.0" in changes, field
        assert getattr(model.config, field) == 0.0
    assert all(m.p == 0.0 for m in model.modules() if isinstance(m, DropoutNd))
    has_dropout_modules = any(isinstance(m, DropoutNd) for m in make_tiny(family).modules())
    assert any(".p: " in change for change in changes) == has_dropout_modules
    assert disable_dropout(model) == []  # idempotent


@pytest.mark.parametrize("family", ["t5", "bert", "gpt2", "llama"])
def test_module_attributes_read_at_forward_time(family):
    """Attention modules that keep their probability as a float attribute (T5, llama) are switched off too."""
    model = make_tiny(family)
    changes = disable_dropout(model)
    attribute = {"t5": ".SelfAttention.dropout:", "llama": ".self_attn.attention_dropout:"}.get(family)
    if attribute is not None:
        assert any(attribute in change for change in changes), changes
    for module in model.modules():
        for name, value in vars(module).items():
            if "dropout" in name.lower() and isinstance(value, float):
                assert value == 0.0, (type(module).__name__, name)


@pytest.mark.parametrize("family", ["t5", "bert", "gpt2", "llama"])
def test_get_peft_model_disables_dropout_by_default(family):
    model = make_superpos(family, default_task(family))
    first, second = two_train_forwards(model, family)
    assert torch.equal(first, second)
    assert all(getattr(model.get_base_model().config, f) == 0.0 for f in CONFIG_DROPOUTS[family])

    kept = make_superpos(family, default_task(family), disable_dropout=False)
    first, second = two_train_forwards(kept, family)
    assert not torch.equal(first, second)
    assert all(getattr(kept.get_base_model().config, f) == DROPOUT for f in CONFIG_DROPOUTS[family])


# -- make_param_groups ------------------------------------------------------------------------------------
def grouped(groups):
    return {id(p): group for group in groups for p in group["params"]}


@pytest.mark.parametrize("family", ["bert", "roberta", "llama"])
def test_param_groups_of_a_peft_model(family):
    model = make_superpos(family, default_task(family))
    groups = make_param_groups(model, 0.01)
    by_id = grouped(groups)
    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    assert set(by_id) == {id(p) for p in trainable.values()}  # exactly the trainable parameters
    assert sum(len(g["params"]) for g in groups) == len(trainable)  # each once
    encoder = model.prompt_encoder["default"]
    assert all(p is not encoder.frozen_embeddings for g in groups for p in g["params"])
    assert id(encoder.frozen_embeddings) not in by_id
    for name, parameter in trainable.items():
        expected = 0.0 if name.endswith("bias") else 0.01  # ΔE, p' and head weights decay; biases do not
        assert by_id[id(parameter)]["weight_decay"] == expected, name
        assert "lr" not in by_id[id(parameter)]
    assert {g["weight_decay"] for g in groups} == ({0.01, 0.0} if family != "llama" else {0.01})


def test_param_groups_learning_rates_and_no_decay_names():
    model = make_superpos("gpt2")
    groups = make_param_groups(model, 0.1, lr_by_name={"delta": 1e-3})
    by_id = grouped(groups)
    encoder = model.prompt_encoder["default"]
    assert by_id[id(encoder.delta)]["lr"] == 1e-3
    assert "lr" not in by_id[id(encoder.weights)]
    assert by_id[id(encoder.delta)]["weight_decay"] == by_id[id(encoder.weights)]["weight_decay"] == 0.1

    base = make_tiny("gpt2")  # all trainable: LayerNorms ("ln_"), biases and norms get no decay
    by_id = grouped(make_param_groups(base, 0.1))
    for name, parameter in base.named_parameters():
        group = by_id[id(parameter)]
        no_decay = "bias" in name or "ln_" in name or "norm" in name
        assert group["weight_decay"] == (0.0 if no_decay else 0.1), name

    with pytest.raises(ValueError, match="no trainable parameters"):
        make_param_groups(make_tiny("gpt2").requires_grad_(False), 0.1)


def test_trainer_with_param_groups(tmp_path):
    from transformers import Trainer, TrainingArguments

    model = make_superpos("gpt2")
    encoder = model.prompt_encoder["default"]
    delta_before = encoder.delta.detach().clone()
    frozen_before = encoder.frozen_embeddings.clone()
    embeddings_before = model.get_base_model().get_input_embeddings().weight.detach().clone()

    input_ids, attention_mask = tiny_batch("gpt2", batch=4, seed=3)
    labels = labels_for("CAUSAL_LM", input_ids, attention_mask)
    dataset = [
        {"input_ids": i, "attention_mask": a, "labels": lab}
        for i, a, lab in zip(input_ids, attention_mask, labels, strict=True)
    ]
    optimizer = torch.optim.AdamW(make_param_groups(model, 1e-5), lr=1e-2)
    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=2,
        max_steps=3,
        learning_rate=1e-2,
        report_to=[],
        save_strategy="no",
        logging_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
        label_names=["labels"],
        dataloader_num_workers=0,
    )
    trainer = Trainer(model=model, args=args, train_dataset=dataset, optimizers=(optimizer, None))
    result = trainer.train()
    assert trainer.state.global_step == 3
    assert torch.isfinite(torch.tensor(result.training_loss))
    assert not torch.equal(encoder.delta.detach(), delta_before)  # ΔE moved
    assert torch.equal(encoder.frozen_embeddings, frozen_before)  # E_freeze did not
    assert torch.equal(model.get_base_model().get_input_embeddings().weight, embeddings_before)
