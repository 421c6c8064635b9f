"""Switch off the dropout of a frozen backbone (the SuperPos paper's second finding)."""

from __future__ import annotations

import logging

from torch import nn

logger = logging.getLogger(__name__)


def _is_dropout_probability(name: str, value: object) -> bool:
    lowered = name.lower()
    named_like_dropout = "dropout" in lowered or lowered.endswith("pdrop")
    return named_like_dropout and isinstance(value, float) and not isinstance(value, bool) and value > 0


def _configs_of(model: nn.Module) -> list[tuple[str, object]]:
    """Every (prefix, config) a model reads at forward time: its config and nested sub-configs."""
    found, seen = [], set()
    for module_name, module in model.named_modules():
        config = getattr(module, "config", None)
        stack = [(f"{module_name}.config" if module_name else "config", config)]
        while stack:
            prefix, cfg = stack.pop()
            if cfg is None or id(cfg) in seen or not hasattr(cfg, "to_dict"):
                continue
            seen.add(id(cfg))
            found.append((prefix, cfg))
            for key, value in vars(cfg).items():
                if hasattr(value, "to_dict"):
                    stack.append((f"{prefix}.{key}", value))
    return found


def disable_dropout(model: nn.Module) -> list[str]:
    """Set every dropout probability of ``model`` to 0 and return what changed, as ``"where: old -> 0.0"``.

    Covers ``nn.Dropout``-like modules, float attributes that modules read at forward time (T5's
    ``T5Attention.dropout``, llama's ``attention_dropout``, BART's ``activation_dropout`` ...) and the
    model configs (T5 ``dropout_rate``, BERT ``hidden_dropout_prob``, GPT-2 ``resid_pdrop`` ...), so that
    modules built later from the config get no dropout either. Idempotent: a second call returns ``[]``.
    """
    changes: list[str] = []
    for name, module in model.named_modules():
        where = name or type(model).__name__
        if isinstance(module, nn.modules.dropout._DropoutNd) and module.p > 0:
            changes.append(f"{where}.p: {module.p} -> 0.0")
            module.p = 0.0
        for attr, value in list(vars(module).items()):
            if not attr.startswith("_") and _is_dropout_probability(attr, value):
                changes.append(f"{where}.{attr}: {value} -> 0.0")
                setattr(module, attr, 0.0)
    for prefix, config in _configs_of(model):
        for attr, value in list(vars(config).items()):
            if _is_dropout_probability(attr, value):
                changes.append(f"{prefix}.{attr}: {value} -> 0.0")
                setattr(config, attr, 0.0)
    if changes:
        logger.info("disable_dropout set %d dropout probabilities to 0", len(changes))
    return changes
