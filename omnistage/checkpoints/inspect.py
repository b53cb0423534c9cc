"""How to load a transformers checkpoint, decided by its config (``model_type``), never by trying
one class and catching the error."""
from __future__ import annotations

from typing import Any, Literal

from transformers import AutoConfig
from transformers.models.auto.modeling_auto import (MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
                                                    MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES)

LanguageModelClass = Literal["causal_lm", "image_text_to_text"]


def read_config(path: str) -> Any:
    """The checkpoint's transformers config (a local directory, or a hub id where a hub is reachable)."""
    return AutoConfig.from_pretrained(path)


def language_model_class(config: Any, path: str = "") -> LanguageModelClass:
    """Which Auto class loads a generating model: image-text-to-text for vision-language models and
    the Qwen2.5-Omni thinker (only their language model pages its KV), causal LM for text models.
    Raises ValueError for a checkpoint that is neither."""
    model_type = config.model_type
    if model_type in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES:
        return "image_text_to_text"
    if model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return "causal_lm"
    raise ValueError(f"the checkpoint {path or ''} (model_type {model_type!r}) is neither a causal LM nor an "
                     "image-text-to-text model; an ar, prefill or decode stage cannot run it")
