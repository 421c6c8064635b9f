"""One training/evaluation harness for every method (superpos, prompt_tuning, residual, dept, lora, full) and
model kind (decoder-only, encoder-decoder), built on ``transformers.Trainer``.

Layout: :mod:`.config` (run settings), :mod:`.methods` (method table and defaults), :mod:`.features`
(tokenisation, collator, positions), :mod:`.evaluation` (generation / rank classification), :mod:`.trainer`
(Trainer subclass), :mod:`.callbacks` (metrics.jsonl, final.json, learning curve), :mod:`.run_folder` (lock,
identity, checkpoints), :mod:`.run` (one run end to end), :mod:`.errors` (user errors). The CLI is
:mod:`peft_superpos.train`.
"""

from .callbacks import read_rows
from .config import EVAL_MODES, MethodSettings, RunConfig, RunSettings
from .errors import DataError, ModelLoadError, RunConfigError, RunFolderError, UserInputError
from .evaluation import evaluate
from .features import DECODER_SEPARATOR, TextToTextCollator, TextToTextFeatures, install_padding_aware_positions
from .methods import METHODS, MethodSpec, get_method
from .run import build_model, run_experiment
from .trainer import TextToTextTrainer

__all__ = [
    "DECODER_SEPARATOR",
    "DataError",
    "ModelLoadError",
    "RunFolderError",
    "RunSettings",
    "UserInputError",
    "EVAL_MODES",
    "METHODS",
    "MethodSettings",
    "MethodSpec",
    "RunConfig",
    "RunConfigError",
    "TextToTextCollator",
    "TextToTextFeatures",
    "TextToTextTrainer",
    "build_model",
    "evaluate",
    "get_method",
    "install_padding_aware_positions",
    "read_rows",
    "run_experiment",
]
