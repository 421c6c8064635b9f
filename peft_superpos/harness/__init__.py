"""One training/evaluation harness for every method (superpos, prompt_tuning, residual, dept, lora, full) and
model kind (decoder-only, encoder-decoder), built on ``transformers.Trainer``.

Layout: :mod:`.methods` (method table and defaults), :mod:`.features` (tokenisation, collator, positions),
:mod:`.evaluation` (generation / rank classification), :mod:`.trainer` (Trainer subclass), :mod:`.callbacks`
(metrics.jsonl, final.json, learning curve), :mod:`.run` (one run end to end). The CLI is
:mod:`peft_superpos.train`.
"""

from .callbacks import read_rows
from .evaluation import EVAL_MODES, evaluate
from .features import DECODER_SEPARATOR, TextToTextCollator, TextToTextEncoder, install_padding_aware_positions
from .methods import METHODS, MethodSettings, MethodSpec, get_method
from .run import RunConfig, RunConfigError, build_model, run_experiment
from .trainer import TextToTextTrainer

__all__ = [
    "DECODER_SEPARATOR",
    "EVAL_MODES",
    "METHODS",
    "MethodSettings",
    "MethodSpec",
    "RunConfig",
    "RunConfigError",
    "TextToTextCollator",
    "TextToTextEncoder",
    "TextToTextTrainer",
    "build_model",
    "evaluate",
    "get_method",
    "install_padding_aware_positions",
    "read_rows",
    "run_experiment",
]
