"""Loading, resuming and saving: ``from_pretrained`` / ``load_adapter`` with ``is_trainable=True`` resume training
an adapter of ours; a damaged or incomplete adapter folder gets an error that names the file and the fix;
``save_pretrained`` writes our adapters atomically, as safetensors or (``safe_serialization=False``, with a
warning) as peft's pickle ``adapter_model.bin``, which peft loads with ``torch.load(weights_only=True)``."""

from __future__ import annotations

import functools
import inspect
import json
import pickle
import shutil
import warnings
import zipfile
from pathlib import Path

from peft import PeftModel
from peft.config import PeftConfig
from peft.mapping import PEFT_TYPE_TO_TUNER_MAPPING
from peft.utils import CONFIG_NAME, SAFETENSORS_WEIGHTS_NAME, WEIGHTS_NAME, PeftType
from peft.utils.other import AuxiliaryTrainingWrapper
from safetensors import SafetensorError

from ..atomic_files import staged_files
from .registration import OUR_CONFIGS, is_ours

_HUB_KWARGS = ("subfolder", "revision", "cache_dir", "token", "use_auth_token", "local_files_only")


def _local_folder(model_id, kwargs: dict) -> Path | None:
    """The local adapter folder ``model_id`` (with its ``subfolder``) names, or None for a Hub id."""
    folder = Path(model_id, kwargs.get("subfolder") or "")
    return folder if folder.is_dir() else None


def saved_peft_type(model_id, kwargs: dict) -> str:
    """The ``peft_type`` of the adapter saved at ``model_id``; a ValueError naming the file when it is missing,
    not JSON or not a known PEFT method."""
    folder = _local_folder(model_id, kwargs)
    config_file = Path(model_id, CONFIG_NAME) if folder is None else folder / CONFIG_NAME
    if folder is not None and not config_file.is_file():
        raise FileNotFoundError(
            f"{folder} holds no {CONFIG_NAME}: it is not a saved adapter. Pass the folder that save_pretrained wrote."
        )
    try:
        peft_type = PeftConfig._get_peft_type(str(model_id), **{k: kwargs[k] for k in _HUB_KWARGS if k in kwargs})
    except json.JSONDecodeError as error:
        raise ValueError(
            f"{config_file} is not valid JSON ({error}): the file is damaged or was edited. Restore it, or save the "
            "adapter again."
        ) from error
    except KeyError as error:
        raise ValueError(f"{config_file} has no peft_type: restore the file, or save the adapter again.") from error
    if peft_type not in PeftType.__members__:
        raise ValueError(
            f"peft_type {peft_type!r} in {config_file} is not a known PEFT method (known: "
            f"{', '.join(PeftType.__members__)}): the file was edited or written for a method this installation "
            "lacks. Restore the file, or install the package that defines the method."
        )
    return peft_type


_WEIGHTS_FILES = (SAFETENSORS_WEIGHTS_NAME, WEIGHTS_NAME)  # the order in which peft looks for them
_OTHER_FORMAT = {SAFETENSORS_WEIGHTS_NAME: (WEIGHTS_NAME,), WEIGHTS_NAME: (SAFETENSORS_WEIGHTS_NAME,)}


def _unreadable_weights(where, detail) -> ValueError:
    return ValueError(
        f"Could not read the adapter weights saved in {str(where)!r} ({detail}). The file is truncated or corrupt: "
        "save the adapter again (or download it again)."
    )


def _check_weights_file(model_id, kwargs: dict) -> None:
    """A local adapter folder must hold a weights file, and a pickle one (read only where there is no safetensors
    file) must be a complete ``torch.save`` archive (a zip file): torch's own error names no file."""
    folder = _local_folder(model_id, kwargs)
    if folder is None:
        return
    present = [name for name in _WEIGHTS_FILES if (folder / name).is_file()]
    if not present:
        raise FileNotFoundError(
            f"{folder} holds {CONFIG_NAME} but no {SAFETENSORS_WEIGHTS_NAME} (nor {WEIGHTS_NAME}): the adapter "
            "folder is incomplete. Copy the whole folder that save_pretrained wrote, or save the adapter again."
        )
    if present[0] == WEIGHTS_NAME:
        try:
            with zipfile.ZipFile(folder / WEIGHTS_NAME) as archive:
                damaged = archive.testzip()
        except (zipfile.BadZipFile, EOFError, OSError) as error:
            raise _unreadable_weights(folder / WEIGHTS_NAME, error) from error
        if damaged is not None:
            raise _unreadable_weights(folder / WEIGHTS_NAME, f"bad checksum of {damaged}")


def make_trainable(model: PeftModel, adapter_name: str) -> None:
    """Turn a loaded adapter of ours into a trainable one (the state to train was saved with it)."""
    model.peft_config[adapter_name].inference_mode = False
    for parameter in model.prompt_encoder[adapter_name].trainable_parameters():
        parameter.requires_grad_(True)
    for module in model.modules():  # modules_to_save, e.g. the classification head of SEQ_CLS / TOKEN_CLS
        if isinstance(module, AuxiliaryTrainingWrapper):
            module.set_requires_grad(adapter_name, True)


_original_load_adapter = PeftModel.load_adapter


@functools.wraps(_original_load_adapter)
def load_adapter(self: PeftModel, model_id, adapter_name, is_trainable: bool = False, *args, **kwargs):
    known = self.peft_config.get(adapter_name)
    ours = is_ours(known) if known is not None else saved_peft_type(model_id, kwargs) in OUR_CONFIGS
    if not ours:
        return _original_load_adapter(self, model_id, adapter_name, is_trainable, *args, **kwargs)
    _check_weights_file(model_id, kwargs)
    try:
        result = _original_load_adapter(self, model_id, adapter_name, False, *args, **kwargs)
    except SafetensorError as error:
        raise _unreadable_weights(model_id, error) from error
    except pickle.UnpicklingError as error:  # torch.load(weights_only=True) met something other than tensors
        raise ValueError(
            f"The {WEIGHTS_NAME} saved in {str(model_id)!r} holds objects other than tensors, which peft refuses to "
            f"load (torch.load with weights_only=True; {str(error).splitlines()[0]}). peft_superpos adapters hold "
            "tensors only: save the adapter again, or use a copy from a source you trust."
        ) from error
    if is_trainable:
        make_trainable(self, adapter_name)
    return result


_original_from_pretrained = PeftModel.from_pretrained.__func__


@functools.wraps(_original_from_pretrained)
def from_pretrained(cls, model, model_id, adapter_name="default", is_trainable=False, config=None, **kwargs):
    ours = is_ours(config) if config is not None else saved_peft_type(model_id, kwargs) in OUR_CONFIGS
    if not ours:
        return _original_from_pretrained(cls, model, model_id, adapter_name, is_trainable, config, **kwargs)
    peft_model = _original_from_pretrained(cls, model, model_id, adapter_name, False, config, **kwargs)
    if is_trainable:
        make_trainable(peft_model, adapter_name)
    return peft_model


_original_save_pretrained = PeftModel.save_pretrained
_save_pretrained_signature = inspect.signature(_original_save_pretrained)


@functools.wraps(_original_save_pretrained)
def save_pretrained(self: PeftModel, *args, **kwargs):
    """peft's ``save_pretrained``; for adapters of ours atomic (:func:`~peft_superpos.atomic_files.staged_files`):
    the files are written into a staging folder beside ``save_directory`` and then moved in one by one (weights
    first, ``adapter_config.json`` last, so a config never describes weights that are not there yet), so an adapter
    saved earlier in the same folder is never left half-overwritten. ``safe_serialization=False`` writes peft's
    pickle ``adapter_model.bin`` (with a warning); the weights file of the other format is removed as the new one
    moves in, so the loader (which prefers safetensors) never picks an older save."""
    bound = _save_pretrained_signature.bind(self, *args, **kwargs)
    arguments = bound.arguments
    names = arguments.get("selected_adapters") or list(self.peft_config)
    ours = [name for name in names if is_ours(self.peft_config.get(name))]
    if ours and not arguments.get("safe_serialization", True):
        warnings.warn(
            f"save_pretrained(safe_serialization=False) writes adapter {ours} as {WEIGHTS_NAME}, a pickle. peft "
            "loads it with torch.load(weights_only=True), but other tools may unpickle it fully, which can run "
            "code: safetensors (the default, safe_serialization=True) is the safe format to share.",
            UserWarning,
            stacklevel=2,
        )
    _refuse_partial_state_dict(self, ours, arguments.get("kwargs", {}).get("state_dict"))
    target = Path(arguments["save_directory"])
    if not ours or not arguments.get("is_main_process", True) or target.is_file():
        return _original_save_pretrained(*bound.args, **bound.kwargs)  # peft's own checks and behaviour
    with staged_files(target, last=(CONFIG_NAME,), replaces=_OTHER_FORMAT) as staging:
        if (target / "README.md").is_file():  # peft updates an existing model card rather than replacing it
            shutil.copy2(target / "README.md", staging / "README.md")
        arguments["save_directory"] = str(staging)
        _original_save_pretrained(*bound.args, **bound.kwargs)


def _refuse_partial_state_dict(model: PeftModel, names: list[str], state_dict) -> None:
    """Each adapter's encoder refuses a ``state_dict`` it cannot be saved from (``refuse_partial_state_dict``)."""
    if state_dict is None:
        return
    for name in names:
        encoder_cls = PEFT_TYPE_TO_TUNER_MAPPING[model.peft_config[name].peft_type]
        encoder_cls.refuse_partial_state_dict(model, name, state_dict)
