"""Loading the model of an ``ar``/``prefill``/``decode`` stage, whole or as one tensor-parallel
rank's shard."""
from __future__ import annotations

import os
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

from omnistage.ar_engine.attention import ATTN_IMPLEMENTATION
from omnistage.checkpoints.inspect import language_model_class, read_config
from omnistage.checkpoints.loading import component_kwargs
from omnistage.checkpoints.support import check_tensor_parallel


def load_model(path: str, dtype: torch.dtype, device: str, component: str | None = None, tp_size: int = 1) -> Any:
    """A transformers model wired to the paged attention: a causal LM, or a vision-language model
    (or Omni thinker) whose language model pages its KV while its vision and audio towers keep
    sdpa; which one, its config says. ``component``: a sub-model of the checkpoint (an Omni
    thinker in the released single-directory layout). ``tp_size`` > 1: this rank's shard of a
    causal LM, by its family's tensor-parallel plan (the process group is joined)."""
    sub = component_kwargs(path, component)
    config = sub.get("config") or read_config(path)
    is_lm = language_model_class(config, path) == "causal_lm"
    if tp_size > 1:
        if not is_lm or component is not None:
            raise ValueError("tensor_parallel runs causal language models only")
        check_tensor_parallel(path, (config.architectures or [""])[0], config.to_dict(), tp_size)
        return AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation=ATTN_IMPLEMENTATION,
                                                    distributed_config=shard_config(device, tp_size)).eval()
    if is_lm:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation=ATTN_IMPLEMENTATION,
                                                     **sub)
    else:
        towers = {key: "sdpa" for key in config.sub_configs if key != "text_config"}
        impl = {**towers, "text_config": ATTN_IMPLEMENTATION, "": ATTN_IMPLEMENTATION}
        model = AutoModelForImageTextToText.from_pretrained(path, dtype=dtype, attn_implementation=impl, **sub)
    return model.to(device).eval()


def shard_config(device: str, size: int) -> Any:
    """transformers' distributed config for this rank: the family's tensor-parallel plan over
    ``size`` ranks, on ``device`` (transformers binds the CUDA device named by LOCAL_RANK)."""
    from transformers.distributed import DistributedConfig
    if device.startswith("cuda"):
        os.environ["LOCAL_RANK"] = str(torch.device(device).index or 0)
    return DistributedConfig(tp_plan="auto", tp_size=size)
