"""AdamW parameter groups for PEFT models."""

from __future__ import annotations

from collections.abc import Mapping

from torch import nn

NO_DECAY_NAME_PARTS = ("bias", "norm", "ln_")


def make_param_groups(
    model: nn.Module,
    weight_decay: float = 0.0,
    *,
    lr_by_name: Mapping[str, float] | None = None,
    no_decay_name_parts: tuple[str, ...] = NO_DECAY_NAME_PARTS,
) -> list[dict]:
    """AdamW groups of the trainable parameters of ``model`` only (frozen tensors and buffers never appear).

    - SuperPos ``delta`` (ΔE) gets ``weight_decay``: since a prompt superposes ``E_freeze + ΔE``, decay pulls
      the embeddings back towards the pretrained ones rather than towards zero (the reason ΔE exists).
      ``E_freeze`` is a buffer and is never optimised.
    - SuperPos ``weights`` (p') and every other weight matrix get ``weight_decay`` too (the paper: 1e-5).
    - Biases and normalisation parameters (names containing ``no_decay_name_parts``) get none.
    - ``lr_by_name`` maps a substring of the parameter name to its own learning rate (e.g. DePT's two rates);
      the first matching entry wins, unmatched parameters use the optimizer's lr.
    """
    groups: dict[tuple[float, float | None], list[nn.Parameter]] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        lowered = name.lower()
        decay = 0.0 if any(part in lowered for part in no_decay_name_parts) else weight_decay
        lr = next((rate for part, rate in (lr_by_name or {}).items() if part in name), None)
        groups.setdefault((decay, lr), []).append(parameter)
    if not groups:
        raise ValueError("The model has no trainable parameters: did you call get_peft_model?")
    result = []
    for (decay, lr), parameters in groups.items():
        group = {"params": parameters, "weight_decay": decay}
        if lr is not None:
            group["lr"] = lr
        result.append(group)
    return result
