from ..._peft_compat import register_prompt_method
from .config import DePTConfig
from .model import DePTEmbedding

__all__ = ["DePTConfig", "DePTEmbedding"]

register_prompt_method("dept", DePTConfig, DePTEmbedding)
