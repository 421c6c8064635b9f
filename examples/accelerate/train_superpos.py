"""Train SuperPos-Prompt with ``transformers.Trainer`` under ``accelerate launch``: DeepSpeed ZeRO-3, FSDP2 or
DDP, as the accelerate config says, then save the adapter with ``Trainer.save_model``.

    accelerate launch --config_file examples/accelerate/zero3.yaml examples/accelerate/train_superpos.py \\
        --output-dir runs/z3                              # embedded SmolLM2-135M, offline
    accelerate launch --config_file examples/accelerate/fsdp2.yaml examples/accelerate/train_superpos.py \\
        --model meta-llama/Llama-3.2-1B --output-dir runs/fsdp --max-steps 200

The adapter lands in ``OUTPUT_DIR/adapter`` and loads with ``PeftModel.from_pretrained`` on one process.
"""

import argparse
import os
import sys

import torch
from peft import get_peft_model
from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments

from peft_superpos import SuperPosPromptConfig, disable_dropout
from peft_superpos.distributed import ACCELERATE_FSDP_NEEDS_GPUS, start_deepspeed_on_cpu
from peft_superpos.models import load_model_and_tokenizer

TEXTS = [  # language modelling on a few sentences: enough to see the prompt train and the adapter save
    "Soft prompts steer a frozen language model with a few trained input vectors.",
    "SuperPos-Prompt builds each prompt vector from frozen vocabulary embeddings.",
    "DeepSpeed ZeRO-3 partitions every parameter across the processes.",
    "FSDP shards the decoder layers and gathers them for each forward.",
]


def start_processes_on_cpu() -> None:
    """Without a GPU, accelerate starts the processes but joins them only for DDP: DeepSpeed needs its process
    group (gloo) before TrainingArguments, and FSDP would silently become DDP, so it is refused."""
    if torch.cuda.is_available() or "LOCAL_RANK" not in os.environ:
        return
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        sys.exit(f"{ACCELERATE_FSDP_NEEDS_GPUS}: use a GPU machine.")
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        start_deepspeed_on_cpu()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=os.environ.get("PEFT_SUPERPOS_MODEL"), help="default: embedded SmolLM2")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--max-steps", type=int, default=20)
    parser.add_argument("--num-virtual-tokens", type=int, default=10)
    parser.add_argument("--m", type=int, default=128)
    args = parser.parse_args()

    start_processes_on_cpu()
    training_args = TrainingArguments(  # before the model: under ZeRO-3 the model is then built partitioned
        output_dir=args.output_dir,
        use_cpu=not torch.cuda.is_available(),
        per_device_train_batch_size=2,
        max_steps=args.max_steps,
        learning_rate=3e-3,  # the harness default, AdamW; the Trainer builds the optimizer (DeepSpeed replaces one
        weight_decay=1e-5,  # passed in with optimizers=, and FSDP refuses it): no decay on biases and norms
        lr_scheduler_type="constant",
        save_strategy="no",
        report_to="none",
    )
    model, tokenizer = load_model_and_tokenizer(args.model)
    disable_dropout(model)
    config = SuperPosPromptConfig(task_type="CAUSAL_LM", num_virtual_tokens=args.num_virtual_tokens, m=args.m)
    model = get_peft_model(model, config)

    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=[tokenizer(text) for text in TEXTS],
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),  # pads; labels = the input ids
    )
    result = trainer.train()
    trainer.save_model(os.path.join(args.output_dir, "adapter"))  # every rank: ZeRO-3 and FSDP gather for it
    if trainer.is_world_process_zero():
        engine = trainer.accelerator.distributed_type.value
        print(f"{engine} on {trainer.accelerator.num_processes} processes: final train loss {result.training_loss:.4f}")


if __name__ == "__main__":
    main()
