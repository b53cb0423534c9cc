"""The Qwen2.5-Omni thinker on the AR engine, in a worker: greedy text equals its own generate."""
import torch
from transformers import AutoTokenizer, Qwen2_5OmniThinkerForConditionalGeneration

from omnistage.models.tiny import ensure_tiny
from omnistage.pipeline import Pipeline
from tests.conftest import ROOT


def test_thinker_text_equals_hf_generate_token_for_token():
    path = ensure_tiny("qwen2.5-omni") / "thinker"
    tok = AutoTokenizer.from_pretrained(path)
    ref = Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(path).eval()
    questions = ["Hello there", "Tell me a story about a cat who learned to sing", "What is the weather like?"]
    with Pipeline.from_yaml(ROOT / "examples" / "omni_thinker.yaml") as pipe:
        handles = [pipe.submit(messages=[{"role": "user", "content": q}], max_tokens=12, temperature=0,
                               ignore_eos=True) for q in questions]
        results = [h.result(120) for h in handles]
    for question, result in zip(questions, results):
        enc = tok.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                      return_tensors="pt", return_dict=True)
        with torch.inference_mode():
            out = ref.generate(**enc, max_new_tokens=12, min_new_tokens=12, do_sample=False)
        new = out[0, enc["input_ids"].shape[1]:].tolist()
        assert result.text == tok.decode(new, skip_special_tokens=True)
        assert result.usage["completion_tokens"] == 12
