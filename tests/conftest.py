import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def qwen2_dir() -> Path:
    from omnistage.models.tiny import ensure_tiny
    return ensure_tiny("qwen2")


@pytest.fixture(scope="session")
def hf_greedy(qwen2_dir):
    """Reference: HF generate (greedy) on the same tiny checkpoint, one request at a time."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(qwen2_dir)
    model = AutoModelForCausalLM.from_pretrained(qwen2_dir).eval()

    def run(messages=None, prompt=None, max_tokens=16):
        if messages is not None:
            enc = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        else:
            enc = tok(prompt, return_tensors="pt")
        with torch.inference_mode():
            out = model.generate(**enc, max_new_tokens=max_tokens, do_sample=False)
        new = out[0, enc["input_ids"].shape[1]:].tolist()
        return new, tok.decode(new, skip_special_tokens=True)
    return run
