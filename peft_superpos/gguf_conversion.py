"""Converting an embedded GGUF model once into a plain fp32 checkpoint in the cache.

transformers can read a GGUF file (with ``gguf`` installed), but that is slow and yields a model flagged as
GGUF-quantised, which ``save_pretrained`` and ``transformers.Trainer`` refuse. :func:`ensure_converted` therefore
converts it once into a plain fp32 checkpoint (safetensors + tokenizer) in a cache folder, written atomically and
under a file lock; loading goes through that folder afterwards.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import pathlib
import time
from typing import Any

import torch

from .atomic_files import staged_folder
from .embedded_models import (
    SMOLLM2,
    GgufModel,
    PathLike,
    TokenizerProbe,
    default_cache_dir,
    embedded_gguf_path,
    gguf_sources,
)

logger = logging.getLogger(__name__)

_MARKER_FILENAME = "peft_superpos_conversion.json"
_FORMAT_VERSION = 2  # 2: the tokenizer passed its model's probe (caches of format 1 may hold a misread tokenizer)


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


def check_tokenizer(tokenizer: Any, probe: TokenizerProbe, source: str) -> None:
    """Raise if ``tokenizer`` (read from the GGUF file ``source``) gives ``probe.text`` other ids than the model's
    own tokenizer: a model trained on those ids would be silently wrong."""
    import transformers

    ids = tuple(tokenizer(probe.text)["input_ids"])
    if ids != probe.ids:
        raise RuntimeError(
            f"transformers {transformers.__version__} reads the tokenizer of {source} wrongly: {probe.text!r} becomes "
            f"{len(ids)} ids {list(ids)}, where the model's own tokenizer gives {len(probe.ids)}: {list(probe.ids)}. "
            f"Nothing was converted. Upgrade transformers: pip install -U 'transformers>={probe.fixed_in}'"
        )


def load_gguf_model_and_tokenizer(
    gguf_path: PathLike | None = None, probe: TokenizerProbe | None = None
) -> tuple[Any, Any]:
    """Load the (dequantised, GGUF-flagged) model and tokenizer straight from a GGUF file (slow): the default
    model's file, checked with its probe, when ``gguf_path`` is None. A ``probe`` checks the tokenizer before the
    model is read."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if gguf_path is None:
        gguf_path, probe = embedded_gguf_path(), SMOLLM2.tokenizer_probe
    path = pathlib.Path(gguf_path)
    t0 = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    if probe is not None:
        check_tokenizer(tokenizer, probe, path.name)
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
    import transformers

    payload = {
        "format": _FORMAT_VERSION,
        "transformers": transformers.__version__,
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


def _apply_umask(folder: pathlib.Path) -> None:
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for entry in folder.rglob("*"):
        entry.chmod((0o777 if entry.is_dir() else 0o666) & ~umask)


def _convert_into(target: pathlib.Path, model: GgufModel, sources: list[pathlib.Path]) -> None:
    """Convert ``model`` (its GGUF file, or chunks joined first) into ``target`` via a staging folder in the same
    parent and an atomic rename (:func:`~peft_superpos.atomic_files.staged_folder`; the caller holds the lock)."""
    t0 = time.perf_counter()
    with staged_folder(target) as tmp:
        gguf_path = _join_chunks(model, sources, tmp / model.filename) if model.is_chunked else sources[0]
        gguf_model, tokenizer = load_gguf_model_and_tokenizer(gguf_path, model.tokenizer_probe)
        if model.is_chunked:
            gguf_path.unlink()  # the joined GGUF is only needed while loading
        plain = _plain_copy(gguf_model)
        del gguf_model
        ensure_pad_token(plain, tokenizer)
        _save_converted(plain, tokenizer, tmp)
        _apply_umask(tmp)  # mkdtemp (and some writers) create owner-only entries; make it a normal cache
        # The marker is written last: a folder without it is never treated as a valid cache.
        (tmp / _MARKER_FILENAME).write_text(json.dumps(_marker_payload(model, sources), indent=2))
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
            _convert_into(target, model, sources)
    return target


def ensure_default_model(cache_dir: PathLike | None = None) -> pathlib.Path:
    """:func:`ensure_converted` of the default model (SmolLM2-135M-Instruct)."""
    return ensure_converted(SMOLLM2, cache_dir)


def ensure_pad_token(model: Any, tokenizer: Any) -> None:
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
