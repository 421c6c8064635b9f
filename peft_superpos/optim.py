"""AdamW parameter groups for PEFT models, and how big an AdamW step is on a prompt."""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn

from .distributed import full_shape, gathered
from .tuners.superpos_prompt import SuperPosPromptEmbedding

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


def embedding_rms(word_embeddings: nn.Module, chunk: int = 16384) -> float:
    """Root mean square of every coordinate of the vocabulary's embeddings as the model sees them (the module's
    forward: Gemma and scaled mBART multiply by sqrt(d) there), computed ``chunk`` rows at a time
    (a table partitioned by ZeRO-3 is gathered for this call, as when prompts are built)."""
    rows, dim = full_shape(word_embeddings.weight)
    total = 0.0
    with torch.no_grad(), gathered(word_embeddings.parameters()):
        for start in range(0, rows, chunk):
            ids = torch.arange(start, min(start + chunk, rows), device=word_embeddings.weight.device)
            total += float(word_embeddings(ids).double().pow(2).sum())
    return math.sqrt(total / (rows * dim))


def prompt_step_size(model: nn.Module, lr: float) -> dict[str, float] | None:
    """How far one AdamW step moves each coordinate of a prompt token at the start of training, for a prompt
    method of ``model`` (a ``PeftModel``; None for other methods).

    AdamW moves every trained coordinate by about ``lr`` per step. A free prompt table (stock prompt tuning,
    Residual's and DePT's prompts before anything computed from them) moves by ``lr``. SuperPos moves prompt i by
    ``lr · Σ_j |p'_ij|`` through ΔE_i (with ``use_softmax`` the weights sum to 1), so that path depends on the init
    of p' and on m. This is that path only: AdamW also moves each p'_ij by about ``lr``, which moves prompt i by
    ``lr · Σ_j ±(E_j + ΔE_ij)``, a sum of m embeddings with signs set by the gradient, whatever the init; it needs a
    gradient to measure (``benchmarks/prompt_steps.py`` does, on the real models: on Gemma 3 that path is 4x the
    ΔE path with the normal init at m=128). Returns ``lr``,
    ``weight_l1`` (the mean over prompts of Σ_j |p'_ij|; 1 for a free table), ``per_coordinate`` (their product),
    ``embedding_rms`` (see :func:`embedding_rms`) and ``relative`` (``per_coordinate / embedding_rms``).
    """
    encoders = getattr(model, "prompt_encoder", None)
    if not encoders:
        return None
    encoder = encoders[model.active_adapter]
    weight_l1 = 1.0
    if isinstance(encoder, SuperPosPromptEmbedding):  # p_i = (E_freeze + ΔE_i)ᵀ p'_i
        with gathered([encoder.weights]):  # a ZeRO-3 partition: its whole value, on every rank
            weights = encoder.weights.detach().float().clone()
        weights = weights.softmax(dim=-1) if encoder.use_softmax else weights
        weight_l1 = float(weights.abs().sum(dim=-1).mean())
    rms = embedding_rms(model.get_input_embeddings())
    step = lr * weight_l1
    return {"lr": lr, "weight_l1": weight_l1, "per_coordinate": step, "embedding_rms": rms, "relative": step / rms}
