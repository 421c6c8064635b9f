"""Export a trained prompt of ours as a stock PROMPT_TUNING adapter, loadable without this package."""

from __future__ import annotations

import os
from pathlib import Path

from peft import PeftModel, PromptTuningConfig
from peft.utils import CONFIG_NAME, SAFETENSORS_WEIGHTS_NAME, WEIGHTS_NAME, get_peft_model_state_dict
from safetensors.torch import save_file

from ._peft_compat import is_ours
from .atomic_files import staged_files
from .distributed import inner_module
from .tuners.prompt_table import PROMPT_TABLE_KEY


def export_prompt_tuning(
    model: PeftModel, save_directory: str | os.PathLike, adapter_name: str = "default", is_main_process: bool = True
) -> Path:
    """Write ``adapter_name`` as a plain PROMPT_TUNING adapter (its final ``(n, d)`` table) to ``save_directory``.

    Tensors peft saves besides the prompt (``modules_to_save``, e.g. the classification head of SEQ_CLS /
    TOKEN_CLS models) are exported with it. Stock ``PeftModel.from_pretrained(base, save_directory)`` then gives
    identical logits and generations in a process that never imports peft_superpos. Files are written to a
    staging folder beside ``save_directory`` first and moved into place one by one, ``adapter_config.json`` last
    (:func:`~peft_superpos.atomic_files.staged_files`), so an interrupted export never leaves a half-written file.
    A folder that already holds a file the export writes (a saved adapter, an earlier export) is refused with a
    ``FileExistsError`` and left untouched; other files in it are kept.

    Under DeepSpeed ZeRO-3 or FSDP, call it on every rank (the prompt's parameters are gathered from all of
    them), with ``is_main_process`` true on the one rank that writes, as for ``save_pretrained``.
    """
    config = model.peft_config.get(adapter_name)
    if not is_ours(config):
        raise ValueError(
            f"Adapter {adapter_name!r} is {getattr(config, 'peft_type', None)}, not a peft_superpos prompt method."
        )
    encoder = inner_module(model.prompt_encoder[adapter_name])
    reason = getattr(encoder, "not_exportable_reason", None)
    if reason:
        raise ValueError(f"{config.peft_type.value} cannot be exported as plain prompt tuning: {reason}")
    saved = get_peft_model_state_dict(model, adapter_name=adapter_name)  # gathers split parameters (all ranks)
    table = saved[PROMPT_TABLE_KEY]
    # everything peft saves for this adapter except our encoder's own state (the prompt-method specifics)
    encoder_keys = {name for name, _ in encoder.named_parameters()} | {name for name, _ in encoder.named_buffers()}
    tensors = {key: value.detach().cpu().contiguous() for key, value in saved.items() if key not in encoder_keys}
    stock = PromptTuningConfig(
        task_type=config.task_type,
        num_virtual_tokens=table.shape[0],
        token_dim=table.shape[1],
        num_transformer_submodules=1,
        num_attention_heads=config.num_attention_heads,
        num_layers=config.num_layers,
        modules_to_save=config.modules_to_save,
        base_model_name_or_path=config.base_model_name_or_path,
        revision=config.revision,
        inference_mode=True,
    )
    target = Path(save_directory)
    if not is_main_process:
        return target
    existing = [name for name in (CONFIG_NAME, SAFETENSORS_WEIGHTS_NAME, WEIGHTS_NAME) if (target / name).exists()]
    if existing:
        raise FileExistsError(
            f"{target} already holds {existing}, which export_prompt_tuning would overwrite (e.g. the adapter "
            "saved there, which resuming needs): export to another folder, or move those files away first."
        )
    with staged_files(target, last=(CONFIG_NAME,)) as staging:
        stock.save_pretrained(str(staging))
        save_file(tensors, str(staging / SAFETENSORS_WEIGHTS_NAME), metadata={"format": "pt"})
    return target
