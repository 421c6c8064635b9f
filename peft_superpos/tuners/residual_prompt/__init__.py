from ..._peft_compat import register_prompt_method
from .config import ResidualPromptConfig
from .model import ResidualPromptEmbedding

__all__ = ["ResidualPromptConfig", "ResidualPromptEmbedding"]

register_prompt_method("residual_prompt", ResidualPromptConfig, ResidualPromptEmbedding)
