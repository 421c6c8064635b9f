"""SuperPos-Prompt in a dozen lines: wrap a model, take one optimizer step, save, reload.

python examples/quickstart.py                 # the embedded SmolLM2-135M (offline)
python examples/quickstart.py --model PATH    # any local causal LM / seq2seq model or Hub id
"""

import argparse
import os
import tempfile

import torch
from peft import PeftModel, get_peft_model

from peft_superpos import SuperPosPromptConfig, make_param_groups
from peft_superpos.models import load_model_and_tokenizer

parser = argparse.ArgumentParser()
parser.add_argument("--model", default=os.environ.get("PEFT_SUPERPOS_MODEL"), help="default: embedded SmolLM2")
args = parser.parse_args()

model, tokenizer = load_model_and_tokenizer(args.model)
task_type = "SEQ_2_SEQ_LM" if model.config.is_encoder_decoder else "CAUSAL_LM"
peft_model = get_peft_model(model, SuperPosPromptConfig(task_type=task_type, num_virtual_tokens=10, m=128))
peft_model.print_trainable_parameters()
optimizer = torch.optim.AdamW(make_param_groups(peft_model, weight_decay=1e-5), lr=3e-3)  # ours; the paper: 0.01

batch = tokenizer(["rte sentence1: A cat sat. sentence2: An animal sat. Answer: entailment"], return_tensors="pt")
labels = batch["input_ids"]
loss = peft_model(**batch, labels=labels).loss
loss.backward()
optimizer.step()
print(f"loss {loss.item():.4f}")

with tempfile.TemporaryDirectory() as folder:
    peft_model.save_pretrained(folder)
    reloaded = PeftModel.from_pretrained(load_model_and_tokenizer(args.model)[0], folder)
    peft_model.eval()
    with torch.no_grad():
        same = torch.allclose(peft_model(**batch, labels=labels).logits, reloaded(**batch, labels=labels).logits)
print("reloaded adapter gives the same logits:", same)
assert same
