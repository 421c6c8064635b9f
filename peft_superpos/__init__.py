"""SuperPos-Prompt and other soft-prompt methods as registered PEFT methods.

Importing this package registers the methods with peft, so stock ``get_peft_model`` and
``PeftModel.from_pretrained`` work with their configs.
"""

from . import _peft_compat  # noqa: F401  (checks the peft version and installs the hooks first)
from .dropout import disable_dropout
from .export import export_prompt_tuning
from .optim import make_param_groups, prompt_step_size
from .serving import PromptedInputs, prompted_inputs
from .tuners.dept import DePTConfig, DePTEmbedding
from .tuners.residual_prompt import ResidualPromptConfig, ResidualPromptEmbedding
from .tuners.superpos_prompt import SuperPosPromptConfig, SuperPosPromptEmbedding, WeightInit, expected_weight_l1

__version__ = "0.1.0"

__all__ = [
    "DePTConfig",
    "DePTEmbedding",
    "PromptedInputs",
    "ResidualPromptConfig",
    "ResidualPromptEmbedding",
    "SuperPosPromptConfig",
    "SuperPosPromptEmbedding",
    "WeightInit",
    "disable_dropout",
    "expected_weight_l1",
    "export_prompt_tuning",
    "make_param_groups",
    "prompt_step_size",
    "prompted_inputs",
]
