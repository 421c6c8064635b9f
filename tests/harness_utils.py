"""Tiny offline models for the harness/CLI/example tests: a whitespace word-level tokenizer trained on the
fixture texts, and random Llama / GPT-2 / T5 models (from ``tiny_models``) saved with ``save_pretrained``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURE_DATA = REPO_ROOT / "tests" / "fixtures" / "data"
FAMILIES = ("llama", "gpt2", "t5", "bert")


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


# How the harness models differ from tiny_models' defaults (besides the fixture vocabulary and its special ids).
_HARNESS_OVERRIDES = {
    "llama": {
        "max_position_embeddings": 512,
        "tie_word_embeddings": True,
        "bos_token_id": None,
        "attention_dropout": 0.0,
    },
    "gpt2": {"max_position_embeddings": 512},
    "t5": {},
    "bert": {"max_position_embeddings": 512},  # saved as a plain BertModel, like the embedded MiniLM
}
_HARNESS_TASK_TYPES = {"bert": "FEATURE_EXTRACTION"}


def save_tiny_model(family: str, folder: str | os.PathLike) -> Path:
    """Build and save a tiny ``family`` model plus the fixture tokenizer into ``folder`` (once)."""
    from tiny_models import make_tiny, word_level_tokenizer

    folder = Path(folder)
    if (folder / "config.json").is_file():
        return folder
    tokenizer = word_level_tokenizer(corpus=_fixture_words())
    model = make_tiny(
        family,
        _HARNESS_TASK_TYPES.get(family),
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **_HARNESS_OVERRIDES[family],
    )
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
