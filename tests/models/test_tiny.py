import hashlib

import torch

from omnistage.cli import main
from omnistage.models.tiny import ensure_tiny


def _digest(path):
    return hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest()


def test_generation_is_deterministic_and_cached(tmp_path):
    a = ensure_tiny("qwen2", tmp_path / "a")
    b = ensure_tiny("qwen2", tmp_path / "b")
    assert _digest(a) == _digest(b)
    mtime = (a / "model.safetensors").stat().st_mtime
    assert ensure_tiny("qwen2", tmp_path / "a") == a
    assert (a / "model.safetensors").stat().st_mtime == mtime


def test_every_tiny_model_loads_with_from_pretrained(tmp_path, capsys):
    assert main(["tiny-models", str(tmp_path)]) == 0
    assert "qwen2-vl" in capsys.readouterr().out
    from diffusers import DiffusionPipeline
    from transformers import (AutoImageProcessor, AutoModelForCausalLM, AutoTokenizer,
                              Qwen2VLForConditionalGeneration)
    for name in ("qwen2", "llama", "mistral", "gemma2", "llama3", "qwen3", "qwen3-moe", "gemma3"):
        model = AutoModelForCausalLM.from_pretrained(tmp_path / name)
        tok = AutoTokenizer.from_pretrained(tmp_path / name)
        ids = tok("hello", return_tensors="pt")["input_ids"]
        assert model(ids).logits.shape[-1] == len(tok)
    vl = Qwen2VLForConditionalGeneration.from_pretrained(tmp_path / "qwen2-vl")
    assert type(AutoImageProcessor.from_pretrained(tmp_path / "qwen2-vl")).__name__ == "Qwen2VLImageProcessorPil"
    assert vl.config.image_token_id == AutoTokenizer.from_pretrained(tmp_path / "qwen2-vl").convert_tokens_to_ids("<|image_pad|>")
    pipe = DiffusionPipeline.from_pretrained(tmp_path / "sd")
    image = pipe("a red square", num_inference_steps=2, height=32, width=32,
                 generator=torch.Generator().manual_seed(0)).images[0]
    assert image.size == (32, 32)


def test_validate_command(capsys):
    from tests.conftest import ROOT
    assert main(["validate", str(ROOT / "examples" / "text_chat.yaml")]) == 0
    assert "llm[0] on cpu" in capsys.readouterr().out
    assert main(["validate", str(ROOT / "tests" / "graph" / "broken" / "cycle.yaml")]) == 1
    assert "cycle: a -> b -> a" in capsys.readouterr().err


def test_tiny_qwen2_5_omni_speaks_and_its_sub_models_load_on_their_own():
    """The reference model's own generate runs on the tiny checkpoint (text and a waveform), and
    each sub-model reloads from its own directory with the same weights."""
    from transformers import (AutoTokenizer, Qwen2_5OmniForConditionalGeneration, Qwen2_5OmniTalkerForConditionalGeneration,
                              Qwen2_5OmniThinkerForConditionalGeneration, Qwen2_5OmniToken2WavModel, WhisperFeatureExtractor)
    path = ensure_tiny("qwen2.5-omni")
    model = Qwen2_5OmniForConditionalGeneration.from_pretrained(path).eval()
    tok = AutoTokenizer.from_pretrained(path)
    enc = tok.apply_chat_template([{"role": "user", "content": "Hello there"}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    with torch.inference_mode():
        text, audio = model.generate(**enc, thinker_max_new_tokens=6, talker_max_new_tokens=20, talker_do_sample=False,
                                     talker_eos_token_id=[model.talker.codec_eos_token], speaker="Chelsie")
    assert text.shape[1] > enc["input_ids"].shape[1] and audio.ndim == 1 and audio.numel() > 0
    for name, cls in (("thinker", Qwen2_5OmniThinkerForConditionalGeneration),
                      ("talker", Qwen2_5OmniTalkerForConditionalGeneration), ("token2wav", Qwen2_5OmniToken2WavModel)):
        sub, whole = cls.from_pretrained(path / name).state_dict(), getattr(model, name).state_dict()
        assert sub.keys() == whole.keys() and all(torch.equal(sub[k], whole[k]) for k in sub), name
    assert WhisperFeatureExtractor.from_pretrained(path / "audio").feature_size == 128
