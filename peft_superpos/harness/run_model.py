"""The model phases of a run: load the base model (its kind decided there), pick the eval mode and the features
for that kind, and build the method's adapter on it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peft import PeftConfig, get_peft_model
from transformers import set_seed

from .. import disable_dropout
from ..data import Task, get_task
from ..models import LoadedModel, load_model
from .config import RunConfig
from .errors import ModelLoadError, RunConfigError
from .features import ClassificationFeatures, TextToTextFeatures, install_padding_aware_positions
from .methods import get_method

__all__ = ["Adapter", "build_adapter", "load_base_model", "make_features", "resolve_eval_mode"]

_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "vocab.json",
    "vocab.txt",
    "spiece.model",
)


@dataclass(frozen=True)
class Adapter:
    """The model a run trains: the base model wrapped by the method's peft config (the base model itself for
    full fine-tuning, ``peft_config`` None), and the learning rates by parameter name the config asks for."""

    model: Any
    tokenizer: Any
    peft_config: PeftConfig | None
    lr_by_name: dict[str, float] | None

    @property
    def base_model(self) -> Any:
        return self.model.get_base_model() if self.peft_config is not None else self.model


def load_base_model(config: RunConfig) -> LoadedModel:
    """``config.model`` with its tokenizer and kind, seeded (a new classification head is repeatable)."""
    folder = Path(config.model).expanduser() if config.model else None
    if folder is not None and folder.is_dir() and not any((folder / name).is_file() for name in _TOKENIZER_FILES):
        raise ModelLoadError(
            f"--model {config.model} has no tokenizer (none of {', '.join(_TOKENIZER_FILES)}); save it into the "
            "folder with tokenizer.save_pretrained(...)"
        )
    task = get_task(config.task)
    set_seed(config.seed)
    try:
        return load_model(config.model, num_labels=1 if task.is_regression else len(task.choices))
    except (OSError, ValueError) as error:  # FileNotFoundError included
        raise ModelLoadError(f"could not load --model {config.model}: {' '.join(str(error).split())}") from error


def resolve_eval_mode(config: RunConfig, base: LoadedModel) -> str:
    """``--eval-mode``, or the default of the model's kind (classifiers: classify, else generate)."""
    if config.eval_mode is None:
        return "classify" if base.is_classifier else "generate"
    if (config.eval_mode == "classify") != base.is_classifier:
        kind = "a sequence classifier" if base.is_classifier else "a language model"
        raise RunConfigError(f"--eval-mode {config.eval_mode} does not apply to {config.model or 'the model'} ({kind})")
    return config.eval_mode


def make_features(base: LoadedModel, task: Task, max_length: int) -> TextToTextFeatures | ClassificationFeatures:
    """The tokenisation of the model's kind: class ids for classifiers, source/target token ids otherwise."""
    if base.is_classifier:
        return ClassificationFeatures(base.tokenizer, task, max_length)
    return TextToTextFeatures(base.tokenizer, base.is_encoder_decoder, max_length)


def build_adapter(config: RunConfig, base: LoadedModel) -> Adapter:
    """``config.method``'s peft model on ``base`` (seeded), the backbone's dropout off unless ``keep_dropout``."""
    spec = get_method(config.method)
    model = base.model
    if not config.method_settings.keep_dropout:
        disable_dropout(model)
    set_seed(config.seed)  # prompt inits drawn from torch's RNG (stock prompt tuning) are repeatable
    peft_config = spec.build(config.method_settings, base, seed=config.seed, max_length=config.max_length)
    lr_by_name = None
    if peft_config is not None:
        model = get_peft_model(model, peft_config)
        lr_by_name = peft_config.lr_by_name() if hasattr(peft_config, "lr_by_name") else None
    adapter = Adapter(model, base.tokenizer, peft_config, lr_by_name)
    install_padding_aware_positions(adapter.base_model)
    return adapter
