from ..._peft_compat import register_prompt_method
from .config import SuperPosPromptConfig, WeightInit
from .model import SuperPosPromptEmbedding

__all__ = ["SuperPosPromptConfig", "SuperPosPromptEmbedding", "WeightInit"]

register_prompt_method("superpos_prompt", SuperPosPromptConfig, SuperPosPromptEmbedding)
