"""Method table: a method name -> its peft config class, how the run's settings map onto it, and its learning rate
and weight decay (the paper's).

Every method trains with AdamW at a constant learning rate (no warmup, no schedule) and with the backbone's
dropout switched off (the SuperPos-Prompt paper's finding; ``keep_dropout=True`` keeps it). Parameter groups
come from :func:`peft_superpos.make_param_groups` (a config with ``lr_by_name()``, DePT's, gives its own
learning rates per parameter).

A method's defaults are its config class's defaults, except where the entry's ``defaults`` say otherwise (the
harness compares every prompt method at 10 virtual tokens, so DePT's entry sets 10 tokens and r=8 instead of
DePT's own 60 and 30). Fields the run decides (``seed``, ``max_length``, the vocabulary to sample from, whether
the prompt encoder disables dropout) are filled in for every config class that has them.

Adding a method: its ``tuners/<method>/`` folder (config, model, registration) and one :class:`MethodSpec` in
:data:`METHODS`; the command line, the overhead benchmark and the tests take the list from here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from peft import LoraConfig, PeftConfig, PromptLearningConfig, PromptTuningConfig, PromptTuningInit

from .. import DePTConfig, ResidualPromptConfig, SuperPosPromptConfig
from .config import MethodSettings

if TYPE_CHECKING:
    from ..models import LoadedModel
    from .config import RunConfig

__all__ = ["METHODS", "MethodSettings", "MethodSpec", "get_method"]


def _config_default(config_class: type, name: str) -> Any:
    return next(f.default for f in dataclasses.fields(config_class) if f.name == name)


@dataclass(frozen=True)
class MethodSpec:
    """One method: its peft config class (None: full fine-tuning), its optimizer defaults, and which
    :class:`MethodSettings` set which config field (``settings``: setting name -> config field)."""

    name: str
    description: str
    config_class: type[PeftConfig] | None
    lr: float
    weight_decay: float
    settings: Mapping[str, str] = field(default_factory=dict)
    defaults: Mapping[str, Any] = field(default_factory=dict)  # where the harness differs from the config class
    adjust: Callable[[dict[str, Any]], None] | None = field(default=None, repr=False)  # derived config fields

    @property
    def is_prompt_method(self) -> bool:
        """Prompt methods leave the base model untouched (no unused-parameter search under DDP)."""
        return self.config_class is not None and issubclass(self.config_class, PromptLearningConfig)

    def resolved_lr(self, settings: MethodSettings) -> float:
        return self.lr if settings.lr is None else settings.lr

    def resolved_weight_decay(self, settings: MethodSettings) -> float:
        return self.weight_decay if settings.weight_decay is None else settings.weight_decay

    def default_value(self, config_field: str) -> Any:
        """The value of ``config_field`` when the user sets nothing."""
        if config_field in self.defaults:
            return self.defaults[config_field]
        return _config_default(self.config_class, config_field)

    def peft_config(self, task_type: str, **values: Any) -> PeftConfig | None:
        """The config class with the entry's defaults, ``values`` on top (None for full fine-tuning)."""
        if self.config_class is None:
            return None
        kwargs = {"task_type": task_type, **self.defaults, **values}
        if self.adjust is not None:
            self.adjust(kwargs)
        return self.config_class(**kwargs)

    def build(self, config: RunConfig, base: LoadedModel) -> PeftConfig | None:
        """The peft config of this method for ``config`` on ``base`` (None for full fine-tuning)."""
        if self.config_class is None:
            return None
        settings = config.method_settings
        values = {
            name: getattr(settings, key) for key, name in self.settings.items() if getattr(settings, key) is not None
        }
        run_fields = {
            "seed": config.seed,
            "max_length": config.max_length,
            "sample_vocab_size": _vocab_size(base.model, base.tokenizer),
            "disable_dropout": not settings.keep_dropout,
        }
        fields = {f.name for f in dataclasses.fields(self.config_class)}
        values.update({name: value for name, value in run_fields.items() if name in fields})
        return self.peft_config(_TASK_TYPES[base.kind], **values)

    def summary(self) -> str:
        """One line for ``--help``: description, lr, weight decay and the defaults of the mapped settings."""
        shown = ", ".join(
            f"{key}={self.default_value(name)}"
            for key, name in self.settings.items()
            if key not in ("lr", "softmax") and self.default_value(name) is not None
        )
        return f"{self.name}: {self.description}, lr {self.lr:g}, wd {self.weight_decay:g}" + (
            f" ({shown})" if shown else ""
        )


_TASK_TYPES = MappingProxyType({"decoder": "CAUSAL_LM", "encoder_decoder": "SEQ_2_SEQ_LM", "classifier": "SEQ_CLS"})
"""peft's task type of each :data:`peft_superpos.models.ModelKind`."""


def _vocab_size(model: Any, tokenizer: Any) -> int | None:
    """Sample vocabulary ids only from real tokens (T5's table has padding rows beyond ``len(tokenizer)``)."""
    rows = model.get_input_embeddings().num_embeddings
    return len(tokenizer) if len(tokenizer) < rows else None


def _lora_alpha_twice_rank(kwargs: dict[str, Any]) -> None:
    if kwargs.get("lora_alpha") is None:
        kwargs["lora_alpha"] = 2 * kwargs.get("r", _config_default(LoraConfig, "r"))


_PROMPT = MappingProxyType({"num_virtual_tokens": "num_virtual_tokens"})

METHODS: dict[str, MethodSpec] = {
    spec.name: spec
    for spec in (
        MethodSpec(
            "superpos",
            "SuperPos-Prompt",
            SuperPosPromptConfig,
            lr=1e-2,
            weight_decay=1e-5,
            settings={
                **_PROMPT,
                "m": "m",
                "softmax": "use_softmax",
                "weight_init": "weight_init",
                "weight_init_std": "weight_init_std",
            },
        ),
        MethodSpec(
            "prompt_tuning",
            "stock prompt tuning, sampled-vocab init",
            PromptTuningConfig,
            lr=1e-2,
            weight_decay=1e-2,
            settings=_PROMPT,
            # peft samples the init ids with torch's global RNG: the harness seeds it before building the model.
            defaults={"num_virtual_tokens": 10, "prompt_tuning_init": PromptTuningInit.SAMPLE_VOCAB},
        ),
        MethodSpec(
            "residual",
            "Residual Prompt Tuning",
            ResidualPromptConfig,
            lr=3e-1,
            weight_decay=1e-2,
            settings={**_PROMPT, "bottleneck": "bottleneck_size"},
        ),
        MethodSpec(
            "dept",
            "DePT (prompt lr = lr, low-rank lr = lr_lowrank)",
            DePTConfig,
            lr=_config_default(DePTConfig, "prompt_lr"),
            weight_decay=1e-5,
            settings={**_PROMPT, "rank": "r", "lr": "prompt_lr", "lr_lowrank": "lora_lr"},
            defaults={"num_virtual_tokens": 10, "r": 8},
        ),
        MethodSpec(
            "lora",
            "LoRA on peft's default target modules, alpha = 2r unless set",
            LoraConfig,
            lr=1e-3,
            weight_decay=0.0,
            settings={"rank": "r", "lora_alpha": "lora_alpha", "lora_dropout": "lora_dropout"},
            defaults={"lora_alpha": None},  # None: 2r
            adjust=_lora_alpha_twice_rank,
        ),
        MethodSpec("full", "full fine-tuning (every backbone weight)", None, lr=1e-4, weight_decay=1e-2),
    )
}


def get_method(name: str) -> MethodSpec:
    key = name.lower().replace("-", "_")
    if key not in METHODS:
        raise ValueError(f"unknown method {name!r}; known methods: {', '.join(METHODS)}")
    return METHODS[key]
