"""One training/evaluation harness for every method (superpos, prompt_tuning, residual, dept, lora, full) and
model kind (decoder-only, encoder-decoder, sequence classifier), built on ``transformers.Trainer``.

Layout, in the order of a run (:mod:`.run`): :mod:`.config` (run settings), :mod:`.run_folder` (lock, identity,
checkpoints, where the run starts), :mod:`.run_data` (the examples), :mod:`.engines` (DeepSpeed and FSDP options:
checked, started), :mod:`.run_model` (base model, eval mode, features, the method's adapter; the method table is
:mod:`.methods`), :mod:`.training` (the Trainer's arguments, made before the model, and the Trainer; the subclass
is :mod:`.task_trainer`, its callback :mod:`.callbacks`), :mod:`.summary` (final.json), and
:mod:`.run_record`, which owns every file of the run folder. :mod:`.features` (tokenisation, collator,
positions), :mod:`.evaluation` (generation / rank classification), :mod:`.errors` (user errors). The CLI is
:mod:`peft_superpos.train`.
"""

from .config import EVAL_MODES, MethodSettings, RunConfig, RunSettings
from .errors import DataError, ModelLoadError, RunConfigError, RunFolderError, UserInputError
from .evaluation import evaluate
from .features import TextToTextCollator, TextToTextFeatures, install_padding_aware_positions
from .methods import METHODS, MethodSpec, get_method
from .run import run_experiment
from .run_data import RunData, load_run_data
from .run_model import Adapter, build_adapter, load_base_model
from .run_record import RunRecord, read_rows
from .task_trainer import TaskTrainer

__all__ = [
    "Adapter",
    "DataError",
    "EVAL_MODES",
    "METHODS",
    "MethodSettings",
    "MethodSpec",
    "ModelLoadError",
    "RunConfig",
    "RunConfigError",
    "RunData",
    "RunFolderError",
    "RunRecord",
    "RunSettings",
    "TextToTextCollator",
    "TextToTextFeatures",
    "TaskTrainer",
    "UserInputError",
    "build_adapter",
    "evaluate",
    "get_method",
    "install_padding_aware_positions",
    "load_base_model",
    "load_run_data",
    "read_rows",
    "run_experiment",
]
