"""Tiny offline models for the harness/CLI/example tests: a whitespace word-level tokenizer trained on the
fixture texts, and random Llama / GPT-2 / T5 models saved with ``save_pretrained``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURE_DATA = REPO_ROOT / "tests" / "fixtures" / "data"
FAMILIES = ("llama", "gpt2", "t5")


def _fixture_words() -> list[str]:
    from peft_superpos.data import TASKS, load_task_split

    texts: list[str] = ["Answer:"]
    for task in TASKS.values():
        texts.extend(task.choices)
        for split in ("train", "validation"):
            data = load_task_split(task, split, FIXTURE_DATA)
            texts.extend(data["source"])
            texts.extend(data["target"])
    return texts


def build_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    trainer = trainers.WordLevelTrainer(special_tokens=["<pad>", "</s>", "<unk>"], min_frequency=1)
    tokenizer.train_from_iterator(_fixture_words(), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def build_model(family: str, vocab_size: int):
    import torch
    from transformers import (
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
        T5Config,
        T5ForConditionalGeneration,
    )

    torch.manual_seed(0)
    common = {"pad_token_id": 0, "eos_token_id": 1}
    if family == "llama":
        config = LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=512,
            tie_word_embeddings=True,
            bos_token_id=None,
            **common,
        )
        return LlamaForCausalLM(config)
    if family == "gpt2":
        config = GPT2Config(
            vocab_size=vocab_size, n_embd=32, n_layer=2, n_head=4, n_positions=512, bos_token_id=1, **common
        )
        return GPT2LMHeadModel(config)
    if family == "t5":
        config = T5Config(
            vocab_size=vocab_size,
            d_model=32,
            d_ff=64,
            d_kv=8,
            num_layers=2,
            num_heads=4,
            decoder_start_token_id=0,
            dropout_rate=0.1,
            **common,
        )
        return T5ForConditionalGeneration(config)
    raise ValueError(family)


def save_tiny_model(family: str, folder: str | os.PathLike) -> Path:
    """Build and save a tiny ``family`` model plus the fixture tokenizer into ``folder`` (once)."""
    folder = Path(folder)
    if (folder / "config.json").is_file():
        return folder
    tokenizer = build_tokenizer()
    model = build_model(family, len(tokenizer))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TRANSFORMERS_VERBOSITY="error",
        TOKENIZERS_PARALLELISM="false",
        OMP_NUM_THREADS="1",
        PYTHONWARNINGS="ignore",
    )
    env.pop("PEFT_SUPERPOS_DATA_DIR", None)
    return env


def cli_args(model: Path, output_dir: Path, task: str = "cb", *extra: str) -> list[str]:
    return [
        task,
        "--model",
        str(model),
        "--data-dir",
        str(FIXTURE_DATA),
        "--output-dir",
        str(output_dir),
        "--batch-size",
        "2",
        "--eval-batch-size",
        "8",
        "--disable-tqdm",
        "--num-virtual-tokens",
        "3",
        "--m",
        "8",
        *extra,
    ]


def run_cli(args: list[str], timeout: float = 240, check: bool = True) -> subprocess.CompletedProcess:
    process = subprocess.run(
        [sys.executable, "-m", "peft_superpos.train", *args],
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=str(REPO_ROOT),
    )
    if check and process.returncode != 0:
        raise AssertionError(f"CLI exited {process.returncode}\n{process.stdout[-3000:]}\n{process.stderr[-6000:]}")
    return process


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def tiny_model_dir(tmp_path_factory, family: str) -> Path:
    """The tiny ``family`` model of this test session (built once, shared by every test module)."""
    return save_tiny_model(family, tmp_path_factory.getbasetemp() / "harness-tiny-models" / family)
