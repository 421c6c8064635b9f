"""Tiny random models built from configs (no downloads), shared by the test suite.

``make_tiny(family, task_type)`` returns a seeded model with hidden size 32, 2 layers, a vocabulary of
``VOCAB`` ids, and dropout 0.1 wherever the architecture has it. The same ``(family, task_type, seed)``
always gives the same weights, so a subprocess can rebuild the parent's base model bit-exactly. Keyword
overrides (any config argument) build other shapes; ``word_level_tokenizer`` builds a matching tokenizer. This
module is the one place the tests build tiny configs, models and tokenizers.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import transformers

VOCAB = 128
HIDDEN = 32
LAYERS = 2
HEADS = 4
FFN = 64
DROPOUT = 0.1
PAD, BOS, EOS = 0, 1, 2
SPECIAL_IDS = {PAD, BOS, EOS}

CAUSAL_FAMILIES = ("gpt2", "llama", "qwen2", "mistral", "opt")
SEQ2SEQ_FAMILIES = ("t5", "bart")
ENCODER_FAMILIES = ("bert", "roberta")
ALL_FAMILIES = CAUSAL_FAMILIES + SEQ2SEQ_FAMILIES + ENCODER_FAMILIES

_SPECIAL = {"pad_token_id": PAD, "bos_token_id": BOS, "eos_token_id": EOS}
_DECODER_ONLY = {
    "intermediate_size": FFN,
    "num_key_value_heads": 2,
    "max_position_embeddings": 128,
    "attention_dropout": DROPOUT,
    "tie_word_embeddings": False,
    **_SPECIAL,
}
_CONFIG_CLASSES = {
    "gpt2": "GPT2Config",
    "llama": "LlamaConfig",
    "qwen2": "Qwen2Config",
    "mistral": "MistralConfig",
    "opt": "OPTConfig",
    "t5": "T5Config",
    "bart": "BartConfig",
    "bert": "BertConfig",
    "roberta": "RobertaConfig",
}


def _family_defaults(family: str, hidden: int, heads: int) -> dict:
    """What a tiny ``family`` config sets beyond vocabulary, width, depth and heads (``hidden`` and ``heads``
    are the final width and head count, for the sizes derived from them)."""
    if family == "gpt2":
        return {"n_positions": 128, "resid_pdrop": DROPOUT, "embd_pdrop": DROPOUT, "attn_pdrop": DROPOUT, **_SPECIAL}
    if family in ("llama", "qwen2"):
        return _DECODER_ONLY
    if family == "mistral":
        return {**_DECODER_ONLY, "head_dim": hidden // heads}
    if family == "opt":
        return {
            "word_embed_proj_dim": hidden,
            "ffn_dim": FFN,
            "max_position_embeddings": 128,
            "dropout": DROPOUT,
            "attention_dropout": DROPOUT,
            **_SPECIAL,
        }
    if family == "t5":
        return {
            "d_kv": hidden // heads,
            "d_ff": FFN,
            "num_decoder_layers": LAYERS,
            "dropout_rate": DROPOUT,
            "pad_token_id": PAD,
            "eos_token_id": EOS,
            "decoder_start_token_id": PAD,
        }
    if family == "bart":
        return {
            "decoder_layers": LAYERS,
            "decoder_attention_heads": heads,
            "encoder_ffn_dim": FFN,
            "decoder_ffn_dim": FFN,
            "max_position_embeddings": 128,
            "dropout": DROPOUT,
            "attention_dropout": DROPOUT,
            "activation_dropout": DROPOUT,
            "decoder_start_token_id": EOS,
            "forced_eos_token_id": None,
            **_SPECIAL,
        }
    return {  # bert, roberta
        "intermediate_size": FFN,
        "max_position_embeddings": 128 + PAD + 2,
        "hidden_dropout_prob": DROPOUT,
        "attention_probs_dropout_prob": DROPOUT,
        "num_labels": 3,
        **_SPECIAL,
    }


def make_config(family: str, **overrides):
    """The ``PretrainedConfig`` of a tiny ``family`` model.

    ``overrides`` replace any config argument, named as the config class names it or by its generic name
    (``hidden_size``, ``num_hidden_layers``, ``num_attention_heads``, ``max_position_embeddings``, ``head_dim``,
    wherever the class maps that name): e.g. ``vocab_size``, ``hidden_size``, ``eos_token_id=1``,
    ``pad_token_id=None``, ``max_position_embeddings=512``. Sizes derived from the width (head size, OPT's
    projection) follow the overridden width and head count unless given too.
    """
    if family not in _CONFIG_CLASSES:
        raise ValueError(f"unknown tiny model family {family!r}; choose one of {ALL_FAMILIES}")
    cls = getattr(transformers, _CONFIG_CLASSES[family])

    def native(name: str) -> str:
        return cls.attribute_map.get(name, name)

    overrides = {native(name): value for name, value in overrides.items()}
    hidden = overrides.get(native("hidden_size"), HIDDEN)
    heads = overrides.get(native("num_attention_heads"), HEADS)
    defaults = {"vocab_size": VOCAB, "hidden_size": hidden, "num_hidden_layers": LAYERS, "num_attention_heads": heads}
    defaults.update(_family_defaults(family, hidden, heads))
    return cls(**{native(name): value for name, value in defaults.items()} | overrides)


_AUTO_BY_TASK = {
    "CAUSAL_LM": "AutoModelForCausalLM",
    "SEQ_2_SEQ_LM": "AutoModelForSeq2SeqLM",
    "SEQ_CLS": "AutoModelForSequenceClassification",
    "TOKEN_CLS": "AutoModelForTokenClassification",
    "FEATURE_EXTRACTION": "AutoModel",
}


def default_task(family: str) -> str:
    if family in CAUSAL_FAMILIES:
        return "CAUSAL_LM"
    if family in SEQ2SEQ_FAMILIES:
        return "SEQ_2_SEQ_LM"
    return "SEQ_CLS"


def make_tiny(family: str, task_type=None, seed: int = 0, dtype: torch.dtype = torch.float32, **overrides):
    """A tiny random ``family`` model for ``task_type`` (a ``TaskType`` or its string), seeded by ``seed``.

    ``overrides`` go to ``make_config`` (e.g. ``hidden_size=48``). Returned in eval mode; the base
    ``generation_config`` is made deterministic (greedy decoding, pad id set).
    """
    task = str(getattr(task_type, "value", task_type) or default_task(family))
    config = make_config(family, **overrides)
    auto = getattr(transformers, _AUTO_BY_TASK[task])
    torch.manual_seed(seed)
    model = auto.from_config(config).to(dtype)
    model.eval()
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.do_sample = False
        model.generation_config.pad_token_id = config.pad_token_id
    return model


SPECIAL_TOKENS = ("<pad>", "</s>", "<unk>")


def word_level_tokenizer(vocabulary: Sequence[str] | None = None, *, corpus: Iterable[str] = (), with_pad: bool = True):
    """A fast WordLevel tokenizer splitting on whitespace (no download), with ``SPECIAL_TOKENS`` as pad, eos and
    unk: over ``vocabulary`` (every word in id order, the special tokens included), or else trained on the texts
    of ``corpus`` (ids 0, 1, 2 the special tokens, then the words, most frequent first). ``with_pad=False`` leaves
    the pad token unset, as in a tokenizer that has none."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    pad, eos, unk = SPECIAL_TOKENS
    word_ids = None if vocabulary is None else {word: i for i, word in enumerate(vocabulary)}
    backend = Tokenizer(models.WordLevel(word_ids, unk_token=unk))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if vocabulary is None:
        trainer = trainers.WordLevelTrainer(special_tokens=list(SPECIAL_TOKENS), min_frequency=1)
        backend.train_from_iterator(corpus, trainer=trainer)
    kwargs = {"pad_token": pad} if with_pad else {}
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=eos, unk_token=unk, **kwargs)


def tiny_batch(family: str, batch: int = 2, length: int = 7, pad_side: str = "right", seed: int = 1):
    """Token ids ``(batch, length)`` avoiding special ids, and an attention mask whose second row is padded
    by two positions (on ``pad_side``)."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, VOCAB, (batch, length), generator=generator)
    attention_mask = torch.ones(batch, length, dtype=torch.long)
    if batch > 1:
        if pad_side == "right":
            input_ids[1, -2:] = PAD
            attention_mask[1, -2:] = 0
        else:
            input_ids[1, :2] = PAD
            attention_mask[1, :2] = 0
    return input_ids, attention_mask


def batch_logits(model, family: str, task_type=None, length: int = 6) -> torch.Tensor:
    """The logits of ``model`` (no grad) on ``tiny_batch(family, length=length)``; a seq2seq model gets the
    first three input ids as its decoder input."""
    task = str(getattr(task_type, "value", task_type) or default_task(family))
    input_ids, attention_mask = tiny_batch(family, length=length)
    extra = {"decoder_input_ids": input_ids[:, :3]} if task == "SEQ_2_SEQ_LM" else {}
    with torch.no_grad():
        return model(input_ids=input_ids, attention_mask=attention_mask, **extra).logits


def make_superpos(family: str, task_type=None, base_seed: int = 0, base=None, **config_kwargs):
    """``get_peft_model`` of a tiny ``family`` model (seeded by ``base_seed``, or ``base``) with a small
    SuperPos-Prompt (n=4, m=16 unless ``config_kwargs`` say otherwise)."""
    from peft import get_peft_model

    from peft_superpos import SuperPosPromptConfig

    task = str(getattr(task_type, "value", task_type) or default_task(family))
    base = make_tiny(family, task, seed=base_seed) if base is None else base
    config_kwargs = {"num_virtual_tokens": 4, "m": 16, **config_kwargs}
    return get_peft_model(base, SuperPosPromptConfig(task_type=task, **config_kwargs))


def labels_for(task_type, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
    """Labels matching ``input_ids`` for a loss of ``task_type`` (None for FEATURE_EXTRACTION)."""
    task = str(getattr(task_type, "value", task_type))
    if task in ("CAUSAL_LM", "SEQ_2_SEQ_LM", "TOKEN_CLS"):
        labels = input_ids.clone() % (3 if task == "TOKEN_CLS" else VOCAB)
        if attention_mask is not None:
            labels[attention_mask == 0] = -100
        return labels
    if task == "SEQ_CLS":
        return torch.arange(input_ids.shape[0]) % 3
    return None


def reference_outputs(model, family: str, task_type=None, max_new_tokens: int = 5) -> dict[str, torch.Tensor]:
    """What persistence tests compare across processes: the logits (last hidden states for
    FEATURE_EXTRACTION) on ``tiny_batch`` and, for generative tasks, greedy generations (causal LM: with
    left and with right padding). Works on any peft model; imports nothing from peft_superpos."""
    task = str(getattr(task_type, "value", task_type) or default_task(family))
    model.eval()
    result = {}
    with torch.no_grad():
        for side in ("left", "right") if task == "CAUSAL_LM" else ("right",):
            input_ids, attention_mask = tiny_batch(family, pad_side=side)
            kwargs = {}
            if task == "SEQ_2_SEQ_LM":
                start = model.get_base_model().config.decoder_start_token_id
                decoder = torch.tensor([[start, 5, 9], [start, 7, 3]])
                kwargs["decoder_input_ids"] = decoder
            output = model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
            logits = getattr(output, "logits", None)
            result[f"logits_{side}"] = output.last_hidden_state if logits is None else logits
            if task in ("CAUSAL_LM", "SEQ_2_SEQ_LM"):
                result[f"generated_{side}"] = model.generate(
                    input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=max_new_tokens
                )
    return result
