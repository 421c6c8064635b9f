"""trl's ``SFTTrainer`` trains SuperPos (the adapter built from ``peft_config``), with the loss our own forward
gives; packed and padding-free batches, which peft cannot keep apart for prompt methods, raise a clear error."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset
from peft import PeftModel
from tiny_models import make_tiny, word_level_tokenizer

# trl is tested from 1.16 (today's newest) on: older trl (0.18, which the lowest-versions job resolves with
# accelerate 1.3) does not shift its metrics past the prompt (num_virtual_tokens, trl 0.22) and packs differently.
pytest.importorskip("trl", minversion="1.16")
from trl import SFTConfig, SFTTrainer  # noqa: E402

from peft_superpos import SuperPosPromptConfig  # noqa: E402
from peft_superpos._peft_compat.routing import packs_sequences  # noqa: E402

WORDS = [f"w{i}" for i in range(40)]
TEXTS = [" ".join(WORDS[i : i + 3 + i % 4]) for i in range(0, 30, 3)]  # 10 texts of 3 to 6 words


def sft_trainer(tmp_path, **config) -> SFTTrainer:
    tokenizer = word_level_tokenizer(corpus=[" ".join(WORDS)])
    model = make_tiny(
        "llama",
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    settings = dict(
        output_dir=str(tmp_path),
        max_steps=3,
        per_device_train_batch_size=2,
        learning_rate=1e-2,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        disable_tqdm=True,
        max_length=32,
    )
    return SFTTrainer(
        model=model,
        args=SFTConfig(**{**settings, **config}),
        train_dataset=Dataset.from_dict({"text": TEXTS}),
        processing_class=tokenizer,
        peft_config=SuperPosPromptConfig(task_type="CAUSAL_LM", num_virtual_tokens=4, m=16),
    )


def test_sft_trainer_trains_superpos(tmp_path):
    trainer = sft_trainer(tmp_path)
    model = trainer.model
    assert isinstance(model, PeftModel) and model.active_peft_config.peft_type.value == "SUPERPOS_PROMPT"
    batch = next(iter(trainer.get_train_dataloader()))
    with torch.no_grad():  # trl's own loss (fused LM head) is the one of our forward: the prompt positions ignored
        torch.testing.assert_close(trainer.compute_loss(model, dict(batch)), model(**batch).loss)
    before = model.prompt_encoder["default"].final_table()
    trainer.train()
    after = model.prompt_encoder["default"].final_table()
    assert not torch.allclose(before, after)
    trainer.save_model(str(tmp_path / "adapter"))
    reloaded = PeftModel.from_pretrained(make_tiny("llama", vocab_size=model.config.vocab_size), tmp_path / "adapter")
    assert torch.equal(reloaded.prompt_encoder["default"].final_table(), after)


@pytest.mark.parametrize(
    "config",
    [{"packing": True}, {"padding_free": True, "max_length": None}],
    ids=["packing", "padding_free"],
)
def test_packed_batches_are_refused(tmp_path, config):
    trainer = sft_trainer(tmp_path, **config)
    with pytest.raises(ValueError, match="packs several sequences into one row"):
        trainer.train()


def test_packed_batch_detection():
    left_padded = torch.tensor([[1, 1, 0, 1, 2], [0, 1, 2, 3, 4]])  # position ids as generation makes them
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert not packs_sequences(left_padded, mask)
    assert not packs_sequences(torch.tensor([[7]]), None)  # one cached step
    assert packs_sequences(torch.tensor([[0, 1, 2, 0, 1]]), None)  # two sequences in one row
    assert packs_sequences(None, None, cu_seq_lens=torch.tensor([0, 3, 5]))
