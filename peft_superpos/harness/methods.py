"""Method table: a method name -> how to wrap the base model, and the paper's default hyperparameters.

Every method trains with AdamW at a constant learning rate (no warmup, no schedule) and with the backbone's
dropout switched off (the SuperPos-Prompt paper's finding; ``keep_dropout=True`` keeps it). Parameter groups
come from :func:`peft_superpos.make_param_groups` (DePT: its two learning rates via ``lr_by_name``).

===============  ======  ========  ===================================================================
method           lr      wd        adapter
===============  ======  ========  ===================================================================
superpos         1e-2    1e-5      SuperPos-Prompt, n=10 tokens, m=128 superposed embeddings
prompt_tuning    1e-2    1e-2      stock peft prompt tuning, n=10, init from sampled vocabulary
residual         3e-1    1e-2      Residual Prompt Tuning, n=10, MLP bottleneck 128
dept             3e-1    1e-5      DePT, n=10 prompt tokens + rank-8 embedding update (lr 1e-4)
lora             1e-3    0         LoRA r=8, alpha=16, peft's default target modules, no LoRA dropout
full             1e-4    1e-2      full fine-tuning (every backbone weight)
===============  ======  ========  ===================================================================

Residual and DePT are imported lazily (by class name from :mod:`peft_superpos`), so the table works in an
install that lacks them and the methods fail with a clear message only when they are asked for.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .config import MethodSettings

if TYPE_CHECKING:
    from .config import RunConfig

__all__ = ["METHODS", "MethodSpec", "MethodSettings", "get_method", "is_prompt_method"]


@dataclass(frozen=True)
class MethodSpec:
    """One method: its defaults and how to build its PEFT config (``None`` for full fine-tuning)."""

    name: str
    lr: float
    weight_decay: float
    build: Callable[[RunConfig, Any, Any], Any] = dataclasses.field(repr=False)
    description: str = ""
    lr_by_name: Callable[[Any, MethodSettings], dict[str, float] | None] = dataclasses.field(
        default=lambda peft_config, settings: None, repr=False
    )

    def resolved_lr(self, settings: MethodSettings) -> float:
        return self.lr if settings.lr is None else settings.lr

    def resolved_weight_decay(self, settings: MethodSettings) -> float:
        return self.weight_decay if settings.weight_decay is None else settings.weight_decay


def _task_type(model: Any) -> str:
    if getattr(model.config, "is_encoder_decoder", False):
        return "SEQ_2_SEQ_LM"
    return "SEQ_CLS" if type(model).__name__.endswith("ForSequenceClassification") else "CAUSAL_LM"


def _vocab_size(model: Any, tokenizer: Any) -> int | None:
    """Sample vocabulary ids only from real tokens (T5's table has padding rows beyond ``len(tokenizer)``)."""
    rows = model.get_input_embeddings().num_embeddings
    return len(tokenizer) if len(tokenizer) < rows else None


def _optional_class(name: str, method: str) -> type:
    """A config class of this package that another part of the project provides (imported lazily)."""
    package = importlib.import_module("peft_superpos")
    cls = getattr(package, name, None)
    if cls is None:
        raise ValueError(
            f"method {method!r} needs peft_superpos.{name}, which this install of peft_superpos does not provide"
        )
    return cls


def _n(settings: MethodSettings, default: int = 10) -> int:
    return default if settings.num_virtual_tokens is None else settings.num_virtual_tokens


def _superpos(config: RunConfig, model: Any, tokenizer: Any) -> Any:
    from peft_superpos import SuperPosPromptConfig

    settings = config.method_settings
    return SuperPosPromptConfig(
        task_type=_task_type(model),
        num_virtual_tokens=_n(settings),
        m=128 if settings.m is None else settings.m,
        use_softmax=settings.softmax,
        seed=config.seed,
        sample_vocab_size=_vocab_size(model, tokenizer),
        disable_dropout=not settings.keep_dropout,
    )


def _prompt_tuning(config: RunConfig, model: Any, tokenizer: Any) -> Any:
    from peft import PromptTuningConfig, PromptTuningInit

    # peft samples the init ids with torch's global RNG: the harness seeds it before building the model.
    return PromptTuningConfig(
        task_type=_task_type(model),
        num_virtual_tokens=_n(config.method_settings),
        prompt_tuning_init=PromptTuningInit.SAMPLE_VOCAB,
    )


def _residual(config: RunConfig, model: Any, tokenizer: Any) -> Any:
    settings = config.method_settings
    cls = _optional_class("ResidualPromptConfig", "residual")
    return cls(
        task_type=_task_type(model),
        num_virtual_tokens=_n(settings),
        bottleneck_size=128 if settings.bottleneck is None else settings.bottleneck,
        seed=config.seed,
        sample_vocab_size=_vocab_size(model, tokenizer),
        disable_dropout=not settings.keep_dropout,
    )


DEPT_LR_LOWRANK = 1e-4


def _dept(config: RunConfig, model: Any, tokenizer: Any) -> Any:
    settings = config.method_settings
    cls = _optional_class("DePTConfig", "dept")
    return cls(
        task_type=_task_type(model),
        num_virtual_tokens=_n(settings),
        r=8 if settings.rank is None else settings.rank,
        max_length=config.max_length,
        prompt_lr=METHODS["dept"].resolved_lr(settings),
        lora_lr=DEPT_LR_LOWRANK if settings.lr_lowrank is None else settings.lr_lowrank,
        seed=config.seed,
        sample_vocab_size=_vocab_size(model, tokenizer),
        disable_dropout=not settings.keep_dropout,
    )


def _dept_lr_by_name(peft_config: Any, settings: MethodSettings) -> dict[str, float]:
    return peft_config.lr_by_name()


def _lora(config: RunConfig, model: Any, tokenizer: Any) -> Any:
    from peft import LoraConfig

    settings = config.method_settings
    rank = 8 if settings.rank is None else settings.rank
    return LoraConfig(
        task_type=_task_type(model),
        r=rank,
        lora_alpha=2 * rank if settings.lora_alpha is None else settings.lora_alpha,
        lora_dropout=0.0 if settings.lora_dropout is None else settings.lora_dropout,
    )


def _full(config: RunConfig, model: Any, tokenizer: Any) -> None:
    return None


METHODS: dict[str, MethodSpec] = {
    spec.name: spec
    for spec in (
        MethodSpec("superpos", 1e-2, 1e-5, _superpos, "SuperPos-Prompt (n=10, m=128)"),
        MethodSpec("prompt_tuning", 1e-2, 1e-2, _prompt_tuning, "stock prompt tuning, sampled-vocab init"),
        MethodSpec("residual", 3e-1, 1e-2, _residual, "Residual Prompt Tuning (bottleneck 128)"),
        MethodSpec("dept", 3e-1, 1e-5, _dept, "DePT (prompt lr 3e-1, low-rank lr 1e-4)", _dept_lr_by_name),
        MethodSpec("lora", 1e-3, 0.0, _lora, "LoRA r=8 on peft's default target modules"),
        MethodSpec("full", 1e-4, 1e-2, _full, "full fine-tuning"),
    )
}

PROMPT_METHODS = ("superpos", "prompt_tuning", "residual", "dept")


def get_method(name: str) -> MethodSpec:
    key = name.lower().replace("-", "_")
    if key not in METHODS:
        raise ValueError(f"unknown method {name!r}; known methods: {', '.join(METHODS)}")
    return METHODS[key]


def is_prompt_method(name: str) -> bool:
    return get_method(name).name in PROMPT_METHODS
