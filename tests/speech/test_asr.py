"""Batched transcription equals Whisper's generate for each clip alone."""
import numpy as np
import torch
from transformers import AutoFeatureExtractor, AutoTokenizer, WhisperForConditionalGeneration

from omnistage.models.tiny import ensure_tiny
from omnistage.speech.asr import Clip, Decoded, Decoding, TranscribeEngine, split_windows


def test_batch_equals_one_at_a_time_and_budgets_are_per_clip():
    """Clips with different budgets go in one call per budget (Whisper's generate restarts a
    segment after a timestamp pair, so a longer budget's first tokens may differ)."""
    path = ensure_tiny("whisper")
    model = WhisperForConditionalGeneration.from_pretrained(path).eval()
    features, tok = AutoFeatureExtractor.from_pretrained(path), AutoTokenizer.from_pretrained(path)

    def feats(clips):
        return features(clips, sampling_rate=16000, return_tensors="pt").input_features

    calls = []

    def transcribe(clips, budget, decoding):
        calls.append((len(clips), budget))
        with torch.inference_mode():
            return [Decoded(row, "en") for row in model.generate(feats(clips), max_new_tokens=budget, language="en").tolist()]

    clips = [np.sin(np.arange(16000) * f / 16000 * 2 * np.pi).astype(np.float32) * 0.3 for f in (220, 440, 880)]
    eng = TranscribeEngine(transcribe, lambda ids: tok.decode(ids, skip_special_tokens=True), max_batch=8)
    for i, clip in enumerate(clips):
        eng.add(Clip(f"c{i}", [clip], max_tokens=[12, 5, 12][i]))
    out = {t.rid: t for t in eng.step()}
    assert not eng.has_work() and sorted(calls) == [(1, 5), (2, 12)]
    for i, clip in enumerate(clips):
        budget = [12, 5, 12][i]
        with torch.inference_mode():
            alone = model.generate(feats([clip]), max_new_tokens=budget, language="en")[0].tolist()
        assert out[f"c{i}"].tokens == len(alone)
        assert out[f"c{i}"].text == tok.decode(alone, skip_special_tokens=True).strip()


def test_long_audio_is_cut_into_windows():
    samples = np.arange(10, dtype=np.float32)
    assert [len(w) for w in split_windows(samples, 4)] == [4, 4, 2]
    calls = []

    def transcribe(rows, budget, decoding):
        calls.append(len(rows))
        return [Decoded([len(r)] * budget, None) for r in rows]
    eng = TranscribeEngine(transcribe, lambda ids: f"w{ids[0]}", max_batch=4)
    eng.add(Clip("long", split_windows(samples, 4), max_tokens=2))
    eng.add(Clip("short", [samples[:3]], max_tokens=2))
    out = {t.rid: t for t in eng.step()}
    assert calls == [4] and out["long"].text == "w4 w4 w2" and out["long"].tokens == 6 and out["short"].text == "w3"


def test_clips_asking_for_different_decodings_run_in_one_call_each():
    calls = []

    def transcribe(rows, budget, decoding):
        calls.append((len(rows), decoding.language))
        return [Decoded([1], decoding.language or "en") for _ in rows]
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
        return [Decoded([len(r)], None) for r in rows]
    eng = TranscribeEngine(transcribe, lambda ids: words[ids[0]], max_batch=2)
    samples = np.arange(11, dtype=np.float32)
    eng.add(Clip("long", split_windows(samples, 4), max_tokens=2))  # windows of 4, 4, 3 samples
    eng.add(Clip("short", [samples[:2]], max_tokens=2))
    steps = [eng.step() for _ in range(2)]
    assert not eng.has_work() and calls == [[4, 4], [3, 2]]
    assert [(t.rid, t.delta, t.finished) for t in steps[0]] == [("long", "w4 w4", False)]
    assert [(t.rid, t.delta, t.finished) for t in steps[1]] == [("long", " w3", True), ("short", "", True)]
    assert steps[1][0].text == "w4 w4 w3" and steps[1][0].tokens == 3


def test_word_timestamps_are_in_clip_time_and_such_clips_batch_apart():
    """A later window's words are offset by where it starts; clips asking for word timestamps
    run in a call of their own."""
    calls = []

    def transcribe(rows, budget, decoding):
        calls.append((len(rows), budget, decoding.words))
        return [Decoded([7] * budget, None, [(0.1, 0.5, "a"), (0.5, 0.9, "b")] if decoding.words else []) for _ in rows]
    eng = TranscribeEngine(transcribe, lambda ids: "a b", max_batch=8)
    window = np.zeros(4, np.float32)
    eng.add(Clip("timed", [window, window[:2]], 3, rate=4, decoding=Decoding(words=True)))
    eng.add(Clip("short", [window], 2, rate=4, decoding=Decoding(words=True)))
    eng.add(Clip("plain", [window], 3, rate=4))
    out = {t.rid: t for t in eng.step()}
    assert sorted(calls) == [(1, 2, True), (1, 3, False), (2, 3, True)]  # (one call per budget, too)
    assert out["timed"].words == [(0.1, 0.5, "a"), (0.5, 0.9, "b"), (1.1, 1.5, "a"), (1.5, 1.9, "b")]
    assert out["short"].tokens == 2 and out["plain"].words is None
