"""The TTS engine against SpeechT5's own generate + vocoder on the tiny checkpoint."""
import math

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer, SpeechT5ForTextToSpeech, SpeechT5HifiGan

from omnistage.models.tiny import ensure_tiny
from omnistage.speech.tts import SpeechJob, TtsEngine, stretch


@pytest.fixture(scope="module")
def tts():
    path = ensure_tiny("speecht5")
    model = SpeechT5ForTextToSpeech.from_pretrained(path).eval()
    vocoder = SpeechT5HifiGan.from_pretrained(path / "vocoder").eval()
    return model, vocoder, AutoTokenizer.from_pretrained(path), load_file(str(path / "voices.safetensors"))


def engine(tts, chunk=8):
    model, vocoder, _, _ = tts

    def generate(jobs):
        ids = torch.tensor([j.ids for j in jobs])
        frames, lengths = model.generate(ids, attention_mask=torch.ones_like(ids),
                                         speaker_embeddings=torch.stack([j.voice for j in jobs]),
                                         return_output_lengths=True)
        return [f[:n] for f, n in zip(frames, lengths)]
    return TtsEngine(generate, vocoder, math.prod(vocoder.config.upsample_rates), max_batch=8, chunk_frames=chunk)


def reference(tts, text, voice):
    model, vocoder, tok, voices = tts
    with torch.inference_mode():
        return model.generate(torch.tensor([tok(text)["input_ids"]]), speaker_embeddings=voices[voice][None],
                              vocoder=vocoder)


def run(eng, first=()):
    audio, chunks = {}, {}
    steps = iter(lambda: eng.step() if eng.has_work() else None, None)
    for out in [list(first), *steps]:
        for c in out:
            audio[c.rid] = torch.cat([audio.get(c.rid, torch.zeros(0)), c.samples])
            chunks[c.rid] = chunks.get(c.rid, 0) + 1
    return audio, chunks


def test_streamed_chunks_equal_the_whole_waveform(tts):
    _, _, tok, voices = tts
    eng = engine(tts)
    eng.add(SpeechJob("a", tok("hello there how are you")["input_ids"], voices["nova"]))
    audio, chunks = run(eng)
    ref = reference(tts, "hello there how are you", "nova")
    assert chunks["a"] > 3 and audio["a"].shape == ref.shape
    assert torch.allclose(audio["a"], ref, atol=1e-5)


def test_same_length_texts_batch_and_each_equals_its_own_run(tts):
    _, _, tok, voices = tts
    texts = {"x": ("a red cat", "alloy"), "y": ("a red dog", "echo"), "z": ("the quick brown fox jumps", "onyx")}
    eng = engine(tts, chunk=16)
    for rid, (text, voice) in texts.items():
        eng.add(SpeechJob(rid, tok(text)["input_ids"], voices[voice]))
    first = eng.step()
    assert set(eng.speaking) == {"x", "y"} and [j.rid for j in eng.waiting] == ["z"]  # one length per batch
    audio, _ = run(eng, first)
    for rid, (text, voice) in texts.items():
        assert torch.allclose(audio[rid], reference(tts, text, voice), atol=1e-5), rid


def test_speed_changes_duration_not_pitch_content():
    frames = torch.randn(40, 16)
    assert stretch(frames, 2.0).shape == (20, 16) and stretch(frames, 0.5).shape == (80, 16)
    assert stretch(frames, 1.0) is frames


def test_abort(tts):
    _, _, tok, voices = tts
    eng = engine(tts)
    eng.add(SpeechJob("a", tok("hello")["input_ids"], voices["nova"]))
    eng.step()
    eng.abort("a")
    assert not eng.has_work()
