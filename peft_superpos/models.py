"""Loading a model for the harness: an embedded model (``embedded_models``; GGUF ones converted once by
``gguf_conversion``), a local folder or a Hub id, as the kind of model it is (decoder, encoder-decoder or sequence
classifier), with a pad token."""

from __future__ import annotations

import logging
import pathlib
import re
import time
from dataclasses import dataclass
from typing import Any, Literal

import torch

from .embedded_models import (
    DEFAULT_MODEL,
    EMBEDDED_MODELS,
    GEMMA3,
    MINILM,
    SMOLLM2,
    FolderModel,
    GgufModel,
    PathLike,
    default_cache_dir,
    embedded_gguf_path,
    folder_model_path,
    gguf_sources,
    minilm_path,
)
from .gguf_conversion import ensure_converted, ensure_default_model, ensure_pad_token, load_gguf_model_and_tokenizer

logger = logging.getLogger(__name__)

_HUB_ID = re.compile(r"[\w.-]+(/[\w.-]+)?")


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
    ensure_pad_token(model, tokenizer)
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
    "MINILM",
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
