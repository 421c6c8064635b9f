"""Method table: a method name -> its peft config class, its settings (each named after the config field it sets),
and its learning rate and weight decay (the paper's, except SuperPos' learning rate: see :data:`SUPERPOS_LR`).

Every method trains with AdamW at a constant learning rate (no warmup, no schedule) and with the backbone's
dropout switched off (the SuperPos-Prompt paper's finding; ``keep_dropout=True`` keeps it). Parameter groups
come from :func:`peft_superpos.make_param_groups` (a config with ``lr_by_name()``, DePT's, gives its own
learning rates per parameter).

A method's defaults are its config class's defaults, except where the entry's ``defaults`` say otherwise (the
harness compares every prompt method at 10 virtual tokens, so DePT's entry sets 10 tokens and r=8 instead of
DePT's own 60 and 30). Fields the run decides (``seed``, ``max_length``, the vocabulary to sample from, whether
the prompt encoder disables dropout) are filled in for every config class that has them.

Adding a method: its ``tuners/<method>/`` folder (config, model, registration) and one :class:`MethodSpec` in
:data:`METHODS`; the command line, the overhead benchmark and the tests take the list from here. Adding a method
setting: one :class:`.method_options.Option` in the ``options`` of its entry (named after the config field);
:data:`MethodSettings`, the command line and ``run_config.json`` follow.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal

from peft import LoraConfig, PeftConfig, PromptLearningConfig, PromptTuningConfig, PromptTuningInit

from .. import DePTConfig, ResidualPromptConfig, SuperPosPromptConfig
from .method_options import Option, positive, settings_class

if TYPE_CHECKING:
    from ..models import LoadedModel

__all__ = ["METHODS", "OPTIONS", "MethodSettings", "MethodSpec", "get_method"]


def _config_default(config_class: type, name: str) -> Any:
    return next(f.default for f in dataclasses.fields(config_class) if f.name == name)


@dataclass(frozen=True)
class MethodSpec:
    """One method: its peft config class (None: full fine-tuning), its optimizer defaults, its ``options`` (the
    settings of the command line, each setting the config field of its name) and ``lr_field``, the config field
    that takes the run's learning rate (DePT's ``prompt_lr``)."""

    name: str
    description: str
    config_class: type[PeftConfig] | None
    lr: float
    weight_decay: float
    options: tuple[Option, ...] = ()
    lr_field: str | None = None
    defaults: Mapping[str, Any] = field(default_factory=dict)  # where the harness differs from the config class
    adjust: Callable[[dict[str, Any]], None] | None = field(default=None, repr=False)  # derived config fields

    @property
    def is_prompt_method(self) -> bool:
        """Prompt methods leave the base model untouched (no unused-parameter search under DDP)."""
        return self.config_class is not None and issubclass(self.config_class, PromptLearningConfig)

    def resolved_lr(self, settings: Any) -> float:
        return self.lr if settings.lr is None else settings.lr

    def resolved_weight_decay(self, settings: Any) -> float:
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

    def build(self, settings: Any, base: LoadedModel, *, seed: int, max_length: int) -> PeftConfig | None:
        """The peft config of this method for the run's :data:`MethodSettings` on ``base`` (None for full
        fine-tuning); ``seed`` and ``max_length`` go to the config classes that have such fields."""
        if self.config_class is None:
            return None
        values = {option.name: getattr(settings, option.name) for option in self.options}
        if self.lr_field is not None:
            values[self.lr_field] = settings.lr
        values = {name: value for name, value in values.items() if value is not None}
        run_fields = {
            "seed": seed,
            "max_length": max_length,
            "sample_vocab_size": _vocab_size(base.model, base.tokenizer),
            "disable_dropout": not settings.keep_dropout,
        }
        fields = {f.name for f in dataclasses.fields(self.config_class)}
        values.update({name: value for name, value in run_fields.items() if name in fields})
        return self.peft_config(_TASK_TYPES[base.kind], **values)

    def summary(self) -> str:
        """One line for ``--help``: description, lr, weight decay and the defaults of its settings."""
        shown = ", ".join(
            f"{option.name}={self.default_value(option.name)}"
            for option in self.options
            if option.type is not bool and self.default_value(option.name) is not None
        )
        return f"{self.name}: {self.description}, lr {self.lr:g}, wd {self.weight_decay:g}" + (
            f" ({shown})" if shown else ""
        )


SUPERPOS_LR = 3e-3
"""SuperPos' default learning rate: our choice, not the paper's 1e-2. In grid v2's learning-rate sweeps (SST-2, 400
steps, scored on a development split of the training file; ``benchmarks/RESULTS.md``) lr 1e-2 leaves SuperPos on
Gemma 3 270M (base) at the majority floor with either init (51.0 and 55.3 against 52.0), and 3e-3 is the best there
(88.0); on SmolLM2-135M-Instruct every lr from 3e-4 to 3e-2 lands within 2.6 points, 3e-3 1.6 below the best."""

_TASK_TYPES = MappingProxyType({"decoder": "CAUSAL_LM", "encoder_decoder": "SEQ_2_SEQ_LM", "classifier": "SEQ_CLS"})
"""peft's task type of each :data:`peft_superpos.models.ModelKind`."""


def _vocab_size(model: Any, tokenizer: Any) -> int | None:
    """Sample vocabulary ids only from real tokens (T5's table has padding rows beyond ``len(tokenizer)``)."""
    rows = model.get_input_embeddings().num_embeddings
    return len(tokenizer) if len(tokenizer) < rows else None


def _lora_alpha_twice_rank(kwargs: dict[str, Any]) -> None:
    if kwargs.get("lora_alpha") is None:
        kwargs["lora_alpha"] = 2 * kwargs.get("r", _config_default(LoraConfig, "r"))


PROMPT_LENGTH = positive("num_virtual_tokens", int, "prompt length")
RANK = positive("r", int, "rank of the low-rank update")
OPTIONS_BEFORE = (
    positive("lr", float, "learning rate"),
    Option("weight_decay", float | None, "AdamW weight decay", check=lambda value: value >= 0, expected="zero or more"),
)
OPTIONS_AFTER = (
    Option("keep_dropout", bool, "keep the backbone's dropout (default: off, as in the paper)", default=False),
)
"""The settings of every method (before and after the methods' own on the command line)."""

METHODS: dict[str, MethodSpec] = {
    spec.name: spec
    for spec in (
        MethodSpec(
            "superpos",
            "SuperPos-Prompt",
            SuperPosPromptConfig,
            lr=SUPERPOS_LR,
            weight_decay=1e-5,
            options=(
                PROMPT_LENGTH,
                positive("m", int, "number of superposed embeddings"),
                Option("use_softmax", bool, "softmax over the weights (ablation)", default=False),
                Option(
                    "weight_init",
                    Literal["normal", "uniform", "one_hot"] | None,
                    "init of the weights p' (normal, uniform, or one_hot: prompt i starts as token i)",
                ),
                positive("weight_init_std", float, "std of p' for the normal and uniform init (default 1/sqrt(m))"),
            ),
        ),
        MethodSpec(
            "prompt_tuning",
            "stock prompt tuning, sampled-vocab init",
            PromptTuningConfig,
            lr=1e-2,
            weight_decay=1e-2,
            options=(PROMPT_LENGTH,),
            # peft samples the init ids with torch's global RNG: the harness seeds it before building the model.
            defaults={"num_virtual_tokens": 10, "prompt_tuning_init": PromptTuningInit.SAMPLE_VOCAB},
        ),
        MethodSpec(
            "residual",
            "Residual Prompt Tuning",
            ResidualPromptConfig,
            lr=3e-1,
            weight_decay=1e-2,
            options=(PROMPT_LENGTH, positive("bottleneck_size", int, "MLP bottleneck width")),
        ),
        MethodSpec(
            "dept",
            "DePT (prompt lr = lr, low-rank lr = lora_lr)",
            DePTConfig,
            lr=_config_default(DePTConfig, "prompt_lr"),
            weight_decay=1e-5,
            options=(PROMPT_LENGTH, RANK, positive("lora_lr", float, "learning rate of A and B")),
            lr_field="prompt_lr",
            defaults={"num_virtual_tokens": 10, "r": 8},
        ),
        MethodSpec(
            "lora",
            "LoRA on peft's default target modules, alpha = 2r unless set",
            LoraConfig,
            lr=1e-3,
            weight_decay=0.0,
            options=(
                RANK,
                positive("lora_alpha", int, "LoRA alpha (default 2*r)"),
                Option(
                    "lora_dropout", float | None, "dropout", check=lambda value: 0 <= value < 1, expected="in [0, 1)"
                ),
            ),
            defaults={"lora_alpha": None},  # None: 2r
            adjust=_lora_alpha_twice_rank,
        ),
        MethodSpec("full", "full fine-tuning (every backbone weight)", None, lr=1e-4, weight_decay=1e-2),
    )
}

OPTIONS: dict[str, Option] = {
    option.name: option
    for option in (*OPTIONS_BEFORE, *(o for spec in METHODS.values() for o in spec.options), *OPTIONS_AFTER)
}
"""Every method setting by name."""

MethodSettings = settings_class(
    [
        *((option, "") for option in OPTIONS_BEFORE),
        *((option, spec.name) for spec in METHODS.values() for option in spec.options),
        *((option, "") for option in OPTIONS_AFTER),
    ]
)
"""The settings of every method (the fields of :data:`OPTIONS`), as the command line and ``run_config.json`` have
them; None means "the method's default"."""


def get_method(name: str) -> MethodSpec:
    key = name.lower().replace("-", "_")
    if key not in METHODS:
        raise ValueError(f"unknown method {name!r}; known methods: {', '.join(METHODS)}")
    return METHODS[key]
