from ..._peft_compat import register_prompt_method
from .config import SuperPosPromptConfig
from .model import SuperPosPromptEmbedding

__all__ = ["SuperPosPromptConfig", "SuperPosPromptEmbedding"]

register_prompt_method("superpos_prompt", SuperPosPromptConfig, SuperPosPromptEmbedding)
