"""Fine-tune SuperPos-Prompt with a plain ``transformers.Trainer`` (no harness): the optimizer comes from
``make_param_groups``, the learning rate is constant, and the loss covers only the label word.

    python examples/trainer_finetune.py --max-steps 20               # embedded SmolLM2-135M, offline
    python examples/trainer_finetune.py --model PATH --max-steps 2   # any local decoder-only model
"""

import argparse
import os
import tempfile

import torch
from peft import get_peft_model
from transformers import Trainer, TrainingArguments

from peft_superpos import SuperPosPromptConfig, disable_dropout, make_param_groups
from peft_superpos.models import load_model_and_tokenizer

EXAMPLES = [
    ("sst2 sentence: a gorgeous, witty film", "positive"),
    ("sst2 sentence: a tedious and lifeless mess", "negative"),
    ("sst2 sentence: one of the best films of the year", "positive"),
    ("sst2 sentence: the plot is dull and the jokes fall flat", "negative"),
]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=os.environ.get("PEFT_SUPERPOS_MODEL"), help="default: embedded SmolLM2")
    parser.add_argument("--max-steps", type=int, default=20)
    parser.add_argument("--output-dir", default=None)
    args = parser.parse_args()

    model, tokenizer = load_model_and_tokenizer(args.model)
    disable_dropout(model)  # the paper's finding: no dropout in the frozen backbone
    model = get_peft_model(model, SuperPosPromptConfig(task_type="CAUSAL_LM", num_virtual_tokens=10, m=128))

    def encode(source: str, target: str) -> dict:
        prompt = tokenizer(source + "\nAnswer:")["input_ids"]
        answer = tokenizer(" " + target, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        return {"input_ids": prompt + answer, "labels": [-100] * len(prompt) + answer}  # loss on the answer only

    def collate(features: list[dict]) -> dict:
        width = max(len(f["input_ids"]) for f in features)
        pad = tokenizer.pad_token_id

        def right_pad(key, value):
            return torch.tensor([f[key] + [value] * (width - len(f[key])) for f in features])

        mask = torch.tensor([[1] * len(f["input_ids"]) + [0] * (width - len(f["input_ids"])) for f in features])
        return {"input_ids": right_pad("input_ids", pad), "attention_mask": mask, "labels": right_pad("labels", -100)}

    train = [encode(source, target) for source, target in EXAMPLES]
    optimizer = torch.optim.AdamW(make_param_groups(model, weight_decay=1e-5), lr=3e-3)  # ours; the paper: 0.01
    with tempfile.TemporaryDirectory() as tmp:
        output_dir = args.output_dir or tmp
        trainer = Trainer(
            model=model,
            args=TrainingArguments(
                output_dir=output_dir,
                max_steps=args.max_steps,
                per_device_train_batch_size=2,
                lr_scheduler_type="constant",
                logging_steps=1,
                save_strategy="no",
                report_to="none",
                remove_unused_columns=False,
                use_cpu=not torch.cuda.is_available(),
            ),
            train_dataset=train,
            data_collator=collate,
            optimizers=(optimizer, None),
        )
        result = trainer.train()
        model.save_pretrained(os.path.join(output_dir, "adapter"))
    print(f"final train loss {result.training_loss:.4f}")


if __name__ == "__main__":
    main()
