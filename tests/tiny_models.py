"""The test utilities of the package: tiny random models, batches, the prompt methods under test, and helpers to
run code in a fresh Python process (conftest.py keeps only pytest set-up and fixtures; the quality suite's helpers
are in quality_results.py).

``make_tiny(family, task_type)`` returns a seeded model with hidden size 32, 2 layers, a vocabulary of
``VOCAB`` ids, and dropout 0.1 wherever the architecture has it. The same ``(family, task_type, seed)``
always gives the same weights, so a subprocess can rebuild the parent's base model bit-exactly. Keyword
overrides (any config argument) build other shapes; ``word_level_tokenizer`` builds a matching tokenizer. This
module is the one place the tests build tiny configs, models and tokenizers. ``prompt_methods()`` lists every
method peft_superpos registers, so a new method is picked up by the common tester (test_methods_common.py).
Nothing here imports peft_superpos at import time: a child process may check that it never loads it.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import textwrap
import traceback
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers

REPO_ROOT = Path(__file__).resolve().parents[1]
TESTS_DIR = Path(__file__).resolve().parent
FIXTURE_DATA = TESTS_DIR / "fixtures" / "data"

VOCAB = 128
HIDDEN = 32
LAYERS = 2
HEADS = 4
FFN = 64
DROPOUT = 0.1
PAD, BOS, EOS = 0, 1, 2
SPECIAL_IDS = {PAD, BOS, EOS}

CAUSAL_FAMILIES = ("gpt2", "llama", "qwen2", "mistral", "opt", "bloom")
# absolute position embeddings numbered 0, 1, ... whatever the mask: with peft's prompt methods (which drop
# position_ids) left padding shifts the positions of the real tokens
POSITIONS_COUNT_LEFT_PADDING = ("gpt2",)
SEQ2SEQ_FAMILIES = ("t5", "bart")
ENCODER_FAMILIES = ("bert", "roberta")
ALL_FAMILIES = CAUSAL_FAMILIES + SEQ2SEQ_FAMILIES + ENCODER_FAMILIES
# families whose embedding module multiplies its rows by sqrt(d) in its forward
SCALED_EMBEDDING_FAMILIES = ("gemma", "gemma3", "mbart")


def config_builds(family: str) -> bool:
    """Whether transformers can build this family's config at all: transformers 5.4 cannot build an MBartConfig
    (its bool default of scale_embedding fails the field's own int annotation under huggingface_hub's checks)."""
    try:
        getattr(transformers, _CONFIG_CLASSES[family])()
    except Exception:  # any validation error of the library's own defaults
        return False
    return True


_SPECIAL = {"pad_token_id": PAD, "bos_token_id": BOS, "eos_token_id": EOS}
_DECODER_ONLY = {
    "intermediate_size": FFN,
    "num_key_value_heads": 2,
    "max_position_embeddings": 128,
    "attention_dropout": DROPOUT,
    "tie_word_embeddings": False,
    **_SPECIAL,
}
_CONFIG_CLASSES = {
    "gpt2": "GPT2Config",
    "llama": "LlamaConfig",
    "qwen2": "Qwen2Config",
    "mistral": "MistralConfig",
    "opt": "OPTConfig",
    "gemma": "GemmaConfig",
    "gemma3": "Gemma3TextConfig",
    "bloom": "BloomConfig",
    "t5": "T5Config",
    "bart": "BartConfig",
    "mbart": "MBartConfig",
    "bert": "BertConfig",
    "roberta": "RobertaConfig",
}


def _family_defaults(family: str, hidden: int, heads: int) -> dict:
    """What a tiny ``family`` config sets beyond vocabulary, width, depth and heads (``hidden`` and ``heads``
    are the final width and head count, for the sizes derived from them)."""
    if family == "gpt2":
        return {"n_positions": 128, "resid_pdrop": DROPOUT, "embd_pdrop": DROPOUT, "attn_pdrop": DROPOUT, **_SPECIAL}
    if family in ("llama", "qwen2"):
        return _DECODER_ONLY
    if family in ("mistral", "gemma", "gemma3"):
        return {**_DECODER_ONLY, "head_dim": hidden // heads}
    if family == "opt":
        return {
            "word_embed_proj_dim": hidden,
            "ffn_dim": FFN,
            "max_position_embeddings": 128,
            "dropout": DROPOUT,
            "attention_dropout": DROPOUT,
            **_SPECIAL,
        }
    if family == "bloom":
        return {"hidden_dropout": DROPOUT, "attention_dropout": DROPOUT, "tie_word_embeddings": False, **_SPECIAL}
    if family == "t5":
        return {
            "d_kv": hidden // heads,
            "d_ff": FFN,
            "num_decoder_layers": LAYERS,
            "dropout_rate": DROPOUT,
            "pad_token_id": PAD,
            "eos_token_id": EOS,
            "decoder_start_token_id": PAD,
        }
    if family in ("bart", "mbart"):
        return {
            **({"scale_embedding": True} if family == "mbart" else {}),
            "decoder_layers": LAYERS,
            "decoder_attention_heads": heads,
            "encoder_ffn_dim": FFN,
            "decoder_ffn_dim": FFN,
            "max_position_embeddings": 128,
            "dropout": DROPOUT,
            "attention_dropout": DROPOUT,
            "activation_dropout": DROPOUT,
            "decoder_start_token_id": EOS,
            "forced_eos_token_id": None,
            **_SPECIAL,
        }
    return {  # bert, roberta
        "intermediate_size": FFN,
        "max_position_embeddings": 128 + PAD + 2,
        "hidden_dropout_prob": DROPOUT,
        "attention_probs_dropout_prob": DROPOUT,
        "num_labels": 3,
        **_SPECIAL,
    }


def make_config(family: str, **overrides):
    """The ``PretrainedConfig`` of a tiny ``family`` model.

    ``overrides`` replace any config argument, named as the config class names it or by its generic name
    (``hidden_size``, ``num_hidden_layers``, ``num_attention_heads``, ``max_position_embeddings``, ``head_dim``,
    wherever the class maps that name): e.g. ``vocab_size``, ``hidden_size``, ``eos_token_id=1``,
    ``pad_token_id=None``, ``max_position_embeddings=512``. Sizes derived from the width (head size, OPT's
    projection) follow the overridden width and head count unless given too.
    """
    if family not in _CONFIG_CLASSES:
        raise ValueError(f"unknown tiny model family {family!r}; choose one of {ALL_FAMILIES}")
    cls = getattr(transformers, _CONFIG_CLASSES[family])

    def native(name: str) -> str:
        return cls.attribute_map.get(name, name)

    overrides = {native(name): value for name, value in overrides.items()}
    hidden = overrides.get(native("hidden_size"), HIDDEN)
    heads = overrides.get(native("num_attention_heads"), HEADS)
    defaults = {"vocab_size": VOCAB, "hidden_size": hidden, "num_hidden_layers": LAYERS, "num_attention_heads": heads}
    defaults.update(_family_defaults(family, hidden, heads))
    return cls(**{native(name): value for name, value in defaults.items()} | overrides)


_AUTO_BY_TASK = {
    "CAUSAL_LM": "AutoModelForCausalLM",
    "SEQ_2_SEQ_LM": "AutoModelForSeq2SeqLM",
    "SEQ_CLS": "AutoModelForSequenceClassification",
    "TOKEN_CLS": "AutoModelForTokenClassification",
    "FEATURE_EXTRACTION": "AutoModel",
}


def task_name(family: str, task_type=None) -> str:
    """``task_type`` (a ``TaskType``, its string, or None for the family's main task) as a string."""
    return str(getattr(task_type, "value", task_type) or default_task(family))


def default_task(family: str) -> str:
    if family in (*CAUSAL_FAMILIES, "gemma", "gemma3"):
        return "CAUSAL_LM"
    if family in (*SEQ2SEQ_FAMILIES, "mbart"):
        return "SEQ_2_SEQ_LM"
    return "SEQ_CLS"


# (family, task type) pairs the method tests cover: every family with its main task, plus the other
# encoder-only tasks
FAMILY_TASKS = [(family, default_task(family)) for family in ALL_FAMILIES] + [
    ("bert", "TOKEN_CLS"),
    ("roberta", "TOKEN_CLS"),
    ("bert", "FEATURE_EXTRACTION"),
    ("roberta", "FEATURE_EXTRACTION"),
]
GENERATIVE_TASKS = ("CAUSAL_LM", "SEQ_2_SEQ_LM")


def make_tiny(family: str, task_type=None, seed: int = 0, dtype: torch.dtype = torch.float32, **overrides):
    """A tiny random ``family`` model for ``task_type`` (a ``TaskType`` or its string), seeded by ``seed``.

    ``overrides`` go to ``make_config`` (e.g. ``hidden_size=48``). Returned in eval mode; the base
    ``generation_config`` is made deterministic (greedy decoding, pad id set).
    """
    task = task_name(family, task_type)
    config = make_config(family, **overrides)
    auto = getattr(transformers, _AUTO_BY_TASK[task])
    torch.manual_seed(seed)
    model = auto.from_config(config).to(dtype)
    model.eval()
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.do_sample = False
        model.generation_config.pad_token_id = config.pad_token_id
    return model


SPECIAL_TOKENS = ("<pad>", "</s>", "<unk>")


def word_level_tokenizer(vocabulary: Sequence[str] | None = None, *, corpus: Iterable[str] = (), with_pad: bool = True):
    """A fast WordLevel tokenizer splitting on whitespace (no download), with ``SPECIAL_TOKENS`` as pad, eos and
    unk: over ``vocabulary`` (every word in id order, the special tokens included), or else trained on the texts
    of ``corpus`` (ids 0, 1, 2 the special tokens, then the words, most frequent first). ``with_pad=False`` leaves
    the pad token unset, as in a tokenizer that has none."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    pad, eos, unk = SPECIAL_TOKENS
    word_ids = None if vocabulary is None else {word: i for i, word in enumerate(vocabulary)}
    backend = Tokenizer(models.WordLevel(word_ids, unk_token=unk))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if vocabulary is None:
        trainer = trainers.WordLevelTrainer(special_tokens=list(SPECIAL_TOKENS), min_frequency=1)
        backend.train_from_iterator(corpus, trainer=trainer)
    kwargs = {"pad_token": pad} if with_pad else {}
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=eos, unk_token=unk, **kwargs)


def tiny_batch(family: str, batch: int = 2, length: int = 7, pad_side: str = "right", seed: int = 1):
    """Token ids ``(batch, length)`` avoiding special ids, and an attention mask whose second row is padded
    by two positions (on ``pad_side``)."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, VOCAB, (batch, length), generator=generator)
    attention_mask = torch.ones(batch, length, dtype=torch.long)
    if batch > 1:
        if pad_side == "right":
            input_ids[1, -2:] = PAD
            attention_mask[1, -2:] = 0
        else:
            input_ids[1, :2] = PAD
            attention_mask[1, :2] = 0
    return input_ids, attention_mask


def batch_logits(model, family: str, task_type=None, length: int = 6) -> torch.Tensor:
    """The logits of ``model`` (no grad) on ``tiny_batch(family, length=length)``; a seq2seq model gets the
    first three input ids as its decoder input."""
    task = task_name(family, task_type)
    input_ids, attention_mask = tiny_batch(family, length=length)
    extra = {"decoder_input_ids": input_ids[:, :3]} if task == "SEQ_2_SEQ_LM" else {}
    with torch.no_grad():
        return model(input_ids=input_ids, attention_mask=attention_mask, **extra).logits


# Small sizes for the tiny adapters of each method (by config class name); a method not named here is tested
# with its config's defaults and NUM_VIRTUAL_TOKENS.
NUM_VIRTUAL_TOKENS = 4
_TINY_METHOD_KWARGS = {
    "SuperPosPromptConfig": {"m": 16},
    "ResidualPromptConfig": {"bottleneck_size": 8},
    "DePTConfig": {"r": 2, "max_length": 16},
}


def prompt_methods() -> list[tuple[type, dict]]:
    """``(config class, small config kwargs)`` of every method peft_superpos registers with peft, in peft's
    registration order: the method list of the common tester."""
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    import peft_superpos  # noqa: F401  (registers the methods)

    ours = [cls for cls in PEFT_TYPE_TO_CONFIG_MAPPING.values() if cls.__module__.startswith("peft_superpos.")]
    return [
        (cls, {"num_virtual_tokens": NUM_VIRTUAL_TOKENS, **_TINY_METHOD_KWARGS.get(cls.__name__, {})}) for cls in ours
    ]


def method_id(config_cls: type) -> str:
    """A short test id for a method: ``SuperPosPromptConfig`` -> ``SuperPosPrompt``."""
    return config_cls.__name__.removesuffix("Config")


def make_peft(family: str, task_type, config_cls: type, base_seed: int = 0, base=None, **config_kwargs):
    """``get_peft_model`` of a tiny ``family`` model (seeded by ``base_seed``, or ``base``) with the adapter
    ``config_cls(task_type=..., **config_kwargs)``."""
    from peft import get_peft_model

    task = task_name(family, task_type)
    base = make_tiny(family, task, seed=base_seed) if base is None else base
    return get_peft_model(base, config_cls(task_type=task, **config_kwargs))


def make_superpos(family: str, task_type=None, base_seed: int = 0, base=None, **config_kwargs):
    """``get_peft_model`` of a tiny ``family`` model (seeded by ``base_seed``, or ``base``) with a small
    SuperPos-Prompt (n=4, m=16 unless ``config_kwargs`` say otherwise)."""
    from peft_superpos import SuperPosPromptConfig

    config_kwargs = {"num_virtual_tokens": NUM_VIRTUAL_TOKENS, "m": 16, **config_kwargs}
    return make_peft(family, task_type, SuperPosPromptConfig, base_seed, base, **config_kwargs)


def perturb(model, seed: int = 7, scale: float = 0.05, adapter_name: str = "default") -> None:
    """Move every parameter of the prompt encoder off its init, as training would (so that zero-initialised
    tensors such as SuperPos' ΔE or DePT's B matter): adds ``scale`` times seeded Gaussian noise."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.prompt_encoder[adapter_name].parameters():
            parameter.add_(scale * torch.randn(parameter.shape, generator=generator).to(parameter.dtype))


def labels_for(task_type, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
    """Labels matching ``input_ids`` for a loss of ``task_type`` (None for FEATURE_EXTRACTION)."""
    task = str(getattr(task_type, "value", task_type))
    if task in ("CAUSAL_LM", "SEQ_2_SEQ_LM", "TOKEN_CLS"):
        labels = input_ids.clone() % (3 if task == "TOKEN_CLS" else VOCAB)
        if attention_mask is not None:
            labels[attention_mask == 0] = -100
        return labels
    if task == "SEQ_CLS":
        return torch.arange(input_ids.shape[0]) % 3
    return None


def reference_outputs(
    model, family: str, task_type=None, max_new_tokens: int = 5, generate: bool = True, use_cache: bool = True
) -> dict[str, torch.Tensor]:
    """What persistence tests compare across processes: the logits (last hidden states for
    FEATURE_EXTRACTION) on ``tiny_batch`` and, for generative tasks unless ``generate=False``, greedy generations
    (causal LM: with left and with right padding; ``use_cache`` goes to ``generate``). Works on any peft model;
    imports nothing from peft_superpos."""
    task = task_name(family, task_type)
    model.eval()
    result = {}
    with torch.no_grad():
        for side in ("left", "right") if task == "CAUSAL_LM" else ("right",):
            input_ids, attention_mask = tiny_batch(family, pad_side=side)
            kwargs = {}
            if task == "SEQ_2_SEQ_LM":
                start = model.get_base_model().config.decoder_start_token_id
                decoder = torch.tensor([[start, 5, 9], [start, 7, 3]])
                kwargs["decoder_input_ids"] = decoder
            output = model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
            logits = getattr(output, "logits", None)
            result[f"logits_{side}"] = output.last_hidden_state if logits is None else logits
            if generate and task in GENERATIVE_TASKS:
                result[f"generated_{side}"] = model.generate(
                    input_ids=input_ids,
                    attention_mask=attention_mask,
                    max_new_tokens=max_new_tokens,
                    use_cache=use_cache,
                )
    return result


def training_batch(family: str, task_type, pad_side: str = "right") -> dict[str, torch.Tensor]:
    """``tiny_batch`` as model inputs, with the labels of ``labels_for`` where the task has a loss."""
    input_ids, attention_mask = tiny_batch(family, pad_side=pad_side)
    batch = {"input_ids": input_ids, "attention_mask": attention_mask}
    labels = labels_for(task_type, input_ids, attention_mask)
    if labels is not None:
        batch["labels"] = labels
    return batch


def main_output(output) -> torch.Tensor:
    """The logits of a model output, or its last hidden states (FEATURE_EXTRACTION has no head)."""
    return output.logits if getattr(output, "logits", None) is not None else output.last_hidden_state


def loss_of(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The model's loss on ``batch``, or the sum of squares of its last hidden states when it has no loss."""
    return output_loss(model(**batch))


def output_loss(output) -> torch.Tensor:
    """The loss of a model output, or the sum of squares of its last hidden states (FEATURE_EXTRACTION has no
    loss; a sum, not a mean, so that one SGD step visibly moves every parameter)."""
    if getattr(output, "loss", None) is not None:
        return output.loss
    return output.last_hidden_state.float().pow(2).sum()


# -- fresh Python processes ---------------------------------------------------------------------------------
def subprocess_env() -> dict[str, str]:
    """The environment of every child Python of the tests (reload scripts, the CLI, examples, torchrun): the
    repo and tests on the path, offline, quiet, one thread, no data directory from the caller's shell; a child that
    dies on a signal (a C++ abort in a collective's thread) prints every thread's Python stack first."""
    env = dict(os.environ)
    paths = [str(REPO_ROOT), str(TESTS_DIR), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(path for path in paths if path)
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TRANSFORMERS_VERBOSITY="error",
        TOKENIZERS_PARALLELISM="false",
        OMP_NUM_THREADS="1",
        PYTHONWARNINGS="ignore",
        PYTHONFAULTHANDLER="1",
    )
    env.pop("PEFT_SUPERPOS_DATA_DIR", None)
    return env


def start_python(script: str, tmp_path: Path, name: str) -> subprocess.Popen:
    """Start ``script`` in a fresh interpreter (non-blocking); finish it with ``finish_python``."""
    path = Path(tmp_path) / f"{name}.py"
    path.write_text(textwrap.dedent(script))
    return subprocess.Popen(
        [sys.executable, str(path)],
        cwd=str(tmp_path),
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish_python(process: subprocess.Popen, timeout: float = 240) -> str:
    """Wait for a process from ``start_python``; fail the test with its output when it did not exit 0."""
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        stdout, stderr = process.communicate()
        pytest.fail(f"subprocess timed out\nstdout:\n{stdout}\nstderr:\n{stderr[-4000:]}")
    if process.returncode != 0:
        pytest.fail(f"subprocess exited {process.returncode}\nstdout:\n{stdout}\nstderr:\n{stderr[-6000:]}")
    return stdout


def reload_outputs(folder: str | os.PathLike, family: str, task_type, use_cache: bool = True) -> dict:
    """What a fresh process reports about the adapter saved in ``folder``: ``reference_outputs`` of
    ``PeftModel.from_pretrained`` on the tiny base (generating with ``use_cache``), the prompt encoder's type and
    state, and its config's ``peft_type`` and ``inference_mode``."""
    from peft import PeftModel

    model = PeftModel.from_pretrained(make_tiny(family, task_type), str(folder))
    encoder = model.prompt_encoder["default"]
    config = model.peft_config["default"]
    outputs = reference_outputs(model, family, task_type, use_cache=use_cache)
    outputs["state"] = {name: tensor.detach().clone() for name, tensor in encoder.state_dict().items()}
    outputs["encoder"] = type(encoder).__name__
    outputs["peft_type"], outputs["inference_mode"] = str(config.peft_type.value), config.inference_mode
    return outputs


RELOAD_SCRIPT = """
import sys
from tiny_models import run_reloads
if {with_package!r}:
    import peft_superpos
run_reloads({cases!r}, use_cache={use_cache!r})
assert {with_package!r} or "peft_superpos" not in sys.modules, "the adapters must load without peft_superpos"
"""
RELOADED_FILE, RELOAD_ERROR_FILE = "reloaded.pt", "reload_error.txt"


def run_reloads(cases: Iterable[tuple[str, str, str]], use_cache: bool = True) -> None:
    """In the child: ``reload_outputs`` of every ``(family, task, folder)`` saved into ``folder``; a case that
    fails writes its traceback there instead, so that one broken case does not hide the others."""
    for family, task, folder in cases:
        try:
            torch.save(reload_outputs(folder, family, task, use_cache), Path(folder) / RELOADED_FILE)
        except Exception:
            (Path(folder) / RELOAD_ERROR_FILE).write_text(traceback.format_exc())


@dataclass
class FreshReload:
    """Adapters that a fresh process is reloading (from ``fresh_reload``)."""

    child: subprocess.Popen
    finished: bool = False

    def result(self, folder: str | os.PathLike) -> dict:
        """The child's ``reload_outputs`` for ``folder`` (waits for the child the first time); fails the test
        with the child's traceback when that case failed there."""
        if not self.finished:
            finish_python(self.child)
            self.finished = True
        error = Path(folder) / RELOAD_ERROR_FILE
        if error.is_file():
            pytest.fail(f"reloading {folder} in a fresh process failed:\n{error.read_text()}")
        return torch.load(Path(folder) / RELOADED_FILE)


@contextlib.contextmanager
def fresh_reload(
    cases: Sequence[tuple[str, str, str]],
    tmp_path: Path,
    name: str,
    with_package: bool = True,
    use_cache: bool = True,
) -> Iterator[FreshReload]:
    """Start one fresh process that reloads every saved adapter ``(family, task, folder)`` of ``cases`` with
    ``PeftModel.from_pretrained`` (script ``name`` in ``tmp_path``), so that its start-up overlaps other tests.
    ``with_package=False``: the child never imports peft_superpos (for exported, stock adapters) and checks
    that nothing did. ``use_cache`` goes to the child's ``generate``. The child is killed on exit if still
    running."""
    script = RELOAD_SCRIPT.format(cases=list(cases), with_package=with_package, use_cache=use_cache)
    child = start_python(script, tmp_path, name)
    try:
        yield FreshReload(child)
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()


# -- the harness: tiny models saved with the fixture tokenizer, and the CLI ---------------------------------
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


# How the harness models differ from make_tiny's defaults (besides the fixture vocabulary and its special ids).
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
    """Build and save a tiny ``family`` model (llama, gpt2, t5, or bert: a plain BertModel, trained as a
    sequence classifier by the harness) plus a word-level tokenizer of the fixture texts into ``folder``
    (once)."""
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


def tiny_model_dir(tmp_path_factory, family: str) -> Path:
    """The tiny harness ``family`` model of this test session (built once, shared by every test module)."""
    return save_tiny_model(family, tmp_path_factory.getbasetemp() / "harness-tiny-models" / family)


def harness_config(model: Path, output_dir: Path, method: str = "superpos", **overrides: Any):
    """A ``RunConfig`` of a tiny harness run: CB fixtures, 2 steps of batch 2, tiny adapter sizes."""
    from peft_superpos.harness import MethodSettings, RunConfig

    values: dict[str, Any] = dict(
        task="cb",
        output_dir=str(output_dir),
        data_dir=str(FIXTURE_DATA),
        model=str(model),
        method=method,
        method_settings=MethodSettings(num_virtual_tokens=3, m=8, bottleneck_size=8, r=2),
        max_steps=2,
        eval_steps=2,
        batch_size=2,
        eval_batch_size=8,
        disable_tqdm=True,
    )
    values.update(overrides)
    return RunConfig(**values)


def adapted(config: Any) -> tuple[Any, Any]:
    """``(model, tokenizer)`` of ``config``: its base model wrapped by its method's adapter, as a run builds it."""
    from peft_superpos.harness import build_adapter, load_base_model

    adapter = build_adapter(config, load_base_model(config))
    return adapter.model, adapter.tokenizer


def cli_args(model: Path, output_dir: Path, task: str = "cb", *extra: str) -> list[str]:
    """Arguments of a short ``peft_superpos.train`` run of ``task`` on the fixture data (n=3, m=8)."""
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
    """Run ``python -m peft_superpos.train *args`` from the repo root; raise with its output if it fails."""
    process = subprocess.run(
        [sys.executable, "-m", "peft_superpos.train", *args],
        env=subprocess_env(),
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
