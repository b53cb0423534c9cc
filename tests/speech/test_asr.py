"""Batched transcription equals Whisper's generate for each clip alone."""
import numpy as np
import torch
from transformers import AutoFeatureExtractor, AutoTokenizer, WhisperForConditionalGeneration

from omnistage.models.tiny import ensure_tiny
from omnistage.speech.asr import Clip, TranscribeEngine, split_windows


def test_batch_equals_one_at_a_time_and_budgets_are_per_clip():
    path = ensure_tiny("whisper")
    model = WhisperForConditionalGeneration.from_pretrained(path).eval()
    features, tok = AutoFeatureExtractor.from_pretrained(path), AutoTokenizer.from_pretrained(path)

    def feats(clips):
        return features(clips, sampling_rate=16000, return_tensors="pt").input_features

    def transcribe(clips, budget, decoding):
        with torch.inference_mode():
            return model.generate(feats(clips), max_new_tokens=budget, language="en").tolist(), ["en"] * len(clips)

    clips = [np.sin(np.arange(16000) * f / 16000 * 2 * np.pi).astype(np.float32) * 0.3 for f in (220, 440, 880)]
    eng = TranscribeEngine(transcribe, lambda ids: tok.decode(ids, skip_special_tokens=True), max_batch=8)
    for i, clip in enumerate(clips):
        eng.add(Clip(f"c{i}", [clip], max_tokens=[12, 5, 12][i]))
    out = {t.rid: t for t in eng.step()}
    assert not eng.has_work()
    for i, clip in enumerate(clips):
        budget = [12, 5, 12][i]
        with torch.inference_mode():
            alone = model.generate(feats([clip]), max_new_tokens=budget, language="en")[0].tolist()
        assert out[f"c{i}"].tokens == budget
        assert out[f"c{i}"].text == tok.decode(alone[:budget], skip_special_tokens=True).strip()


def test_long_audio_is_cut_into_windows():
    samples = np.arange(10, dtype=np.float32)
    assert [len(w) for w in split_windows(samples, 4)] == [4, 4, 2]
    calls = []

    def transcribe(rows, budget, decoding):
        calls.append(len(rows))
        return [[len(r)] * 3 for r in rows], [None] * len(rows)
    eng = TranscribeEngine(transcribe, lambda ids: f"w{ids[0]}", max_batch=4)
    eng.add(Clip("long", split_windows(samples, 4), max_tokens=2))
    eng.add(Clip("short", [samples[:3]], max_tokens=2))
    out = {t.rid: t for t in eng.step()}
    assert calls == [4] and out["long"].text == "w4 w4 w2" and out["long"].tokens == 6 and out["short"].text == "w3"


def test_clips_asking_for_different_decodings_run_in_one_call_each():
    from omnistage.speech.asr import Decoding
    calls = []

    def transcribe(rows, budget, decoding):
        calls.append((len(rows), decoding.language))
        return [[1]] * len(rows), [decoding.language or "en"] * len(rows)
    eng = TranscribeEngine(transcribe, lambda ids: "x", max_batch=8)
    for i, lang in enumerate(["fr", None, "fr", "de", None]):
        eng.add(Clip(f"c{i}", [np.zeros(4, np.float32)], 2, decoding=Decoding(language=lang)))
    out = {t.rid: t for t in eng.step()}
    assert sorted(calls, key=repr) == sorted([(2, "fr"), (2, None), (1, "de")], key=repr)
    assert [out[f"c{i}"].language for i in range(5)] == ["fr", "en", "fr", "de", "en"]


def test_a_long_clip_comes_window_by_window_beside_others():
    """With room for two windows a step, a 3-window clip and a 1-window clip share steps; the
    long clip's deltas join into its transcript, and windows that say nothing add nothing."""
    words = {4: "w4", 2: "", 3: "w3"}
    calls = []

    def transcribe(rows, budget, decoding):
        calls.append([len(r) for r in rows])
        return [[len(r)] for r in rows], [None] * len(rows)
    eng = TranscribeEngine(transcribe, lambda ids: words[ids[0]], max_batch=2)
    samples = np.arange(11, dtype=np.float32)
    eng.add(Clip("long", split_windows(samples, 4), max_tokens=2))  # windows of 4, 4, 3 samples
    eng.add(Clip("short", [samples[:2]], max_tokens=2))
    steps = [eng.step() for _ in range(2)]
    assert not eng.has_work() and calls == [[4, 4], [3, 2]]
    assert [(t.rid, t.delta, t.finished) for t in steps[0]] == [("long", "w4 w4", False)]
    assert [(t.rid, t.delta, t.finished) for t in steps[1]] == [("long", " w3", True), ("short", "", True)]
    assert steps[1][0].text == "w4 w4 w3" and steps[1][0].tokens == 3
