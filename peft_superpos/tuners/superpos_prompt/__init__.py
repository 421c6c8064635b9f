from ..._peft_compat import register_prompt_method
from .config import SuperPosPromptConfig, WeightInit
from .model import SuperPosPromptEmbedding, expected_weight_l1

__all__ = ["SuperPosPromptConfig", "SuperPosPromptEmbedding", "WeightInit", "expected_weight_l1"]

register_prompt_method("superpos_prompt", SuperPosPromptConfig, SuperPosPromptEmbedding)
