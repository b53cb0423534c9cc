"""Speech stages in real worker processes (examples/speech.yaml)."""
import io

import numpy as np
import pytest
import soundfile as sf
import torch
from transformers import AutoFeatureExtractor, AutoTokenizer, WhisperForConditionalGeneration

from omnistage.errors import RequestRejected
from omnistage.models.tiny import ensure_tiny
from omnistage.pipeline import Pipeline
from tests.conftest import ROOT


@pytest.fixture(scope="module")
def speech():
    with Pipeline.from_yaml(ROOT / "examples" / "speech.yaml") as pipe:
        yield pipe


def test_tts_streams_chunks_and_reports_its_rate(speech):
    chunks = [c for c in speech.stream(prompt="hello there how are you", modalities=["audio"], voice="sage")]
    assert len(chunks) > 2 and all(c.modality == "audio" for c in chunks)
    assert speech.orchestrator.infos["speak"]["sample_rate"] == 16000
    with pytest.raises(RequestRejected) as err:
        speech.submit(prompt="hi", modalities=["audio"], voice="nobody")
    assert err.value.param == "voice"


def test_a_long_input_stops_at_the_decoders_position_table_and_the_stage_lives_on(speech):
    """The length cap (input length x maxlenratio) can pass the decoder's position table (1024 on the
    tiny model): the cap is lowered to fit instead of crashing the step for every request."""
    long = speech.generate(prompt="hello there " * 20, modalities=["audio"])
    assert long.outputs["audio"].numel() > 0
    assert speech.generate(prompt="hi", modalities=["audio"]).outputs["audio"].numel() > 0


def test_blank_text_from_upstream_is_answered_with_no_audio(speech):
    """An upstream stage's blank reply (a chat that said nothing) gives an empty clip, not a
    failure; the API refuses a blank input itself (tests/api)."""
    silent = speech.generate(prompt="  ", modalities=["audio"])
    assert silent.outputs["audio"].numel() == 0 and silent.meta["speak"]["sample_rate"] == 16000


def test_transcript_equals_whisper_generate(speech):
    tone = (np.sin(np.arange(16000) * 300 / 16000 * 2 * np.pi) * 0.2).astype(np.float32)
    buf = io.BytesIO()
    sf.write(buf, tone, 16000, format="WAV", subtype="FLOAT")
    got = speech.generate(audio=[buf.getvalue()], max_tokens=10).text
    path = ensure_tiny("whisper")
    model = WhisperForConditionalGeneration.from_pretrained(path).eval()
    feats = AutoFeatureExtractor.from_pretrained(path)([tone], sampling_rate=16000, return_tensors="pt").input_features
    with torch.inference_mode():  # (the stage always names its task, as Whisper decodes; generate adds
        # the task token on its own only when a language is given)
        ids = model.generate(feats, max_new_tokens=10, task="transcribe")[0].tolist()
    assert got == AutoTokenizer.from_pretrained(path).decode(ids, skip_special_tokens=True).strip()


def _wav(samples):
    buf = io.BytesIO()
    sf.write(buf, samples, 16000, format="WAV", subtype="FLOAT")
    return buf.getvalue()


DECODINGS = [{}, {"language": "fr"}, {"language": "de", "task": "translate"},
             {"initial_prompt": "omnistage serves models"},
             {"language": "en", "initial_prompt": "red green blue", "max_tokens": 5}]


def test_language_task_and_prompt_each_equal_whisper_generate_in_one_batch(speech):
    """Requests asking for different decodings, submitted together: each window's transcript
    equals generate's with the same language (or its detection), task and prompt."""
    rng = np.random.default_rng(3)
    clips = [(np.sin(np.arange(16000) * 300 / 16000 * 2 * np.pi) * 0.2).astype(np.float32),
             (rng.standard_normal(48000) * 0.1).astype(np.float32)]  # 3 s: two windows of the 2 s model
    handles = [(speech.submit(audio=[_wav(c)], **{"max_tokens": 8, **d}), c, d) for d in DECODINGS for c in clips]
    path = ensure_tiny("whisper")
    model = WhisperForConditionalGeneration.from_pretrained(path).eval()
    extractor, tok = AutoFeatureExtractor.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    texts = set()
    for handle, clip, d in handles:
        want = []
        for start in range(0, len(clip), 32000):
            feats = extractor([clip[start:start + 32000]], sampling_rate=16000, return_tensors="pt").input_features
            kwargs = {"max_new_tokens": d.get("max_tokens", 8), "language": d.get("language"),
                      "task": d.get("task", "transcribe")}
            if "initial_prompt" in d:
                kwargs["prompt_ids"] = torch.tensor([model.generation_config.prev_sot_token_id]
                                                    + tok.encode(" " + d["initial_prompt"], add_special_tokens=False))
            with torch.inference_mode():
                ids = model.generate(feats, **kwargs)[0].tolist()
            want.append(tok.decode(ids, skip_special_tokens=True).strip())
        got = handle.result(120)
        assert got.text == " ".join(t for t in want if t), d
        texts.add(got.text)
    assert len(texts) > 3  # the decodings differ


@pytest.mark.parametrize("params, param", [({"language": "xx"}, "language"), ({"task": "summarize"}, "task"),
                                           ({"temperature": 1.5}, "temperature"),
                                           ({"initial_prompt": "word " * 40}, "prompt")])
def test_a_bad_decoding_is_refused_naming_it(speech, params, param):
    with pytest.raises(RequestRejected) as err:
        speech.generate(audio=[_wav(np.zeros(1600, np.float32))], **params)
    assert err.value.param == param


def _pipeline_words(clip, max_tokens):
    """transformers' ASR pipeline's word timestamps for ``clip`` (one window), decoding greedily
    as the stage does (the pipeline's default is 5 beams): (text, [(start, end, word)])."""
    from transformers import pipeline
    asr = pipeline("automatic-speech-recognition", model=str(ensure_tiny("whisper")))
    out = asr({"raw": clip, "sampling_rate": 16000}, return_timestamps="word",
              generate_kwargs={"max_new_tokens": max_tokens, "num_beams": 1, "task": "transcribe"})
    return out["text"].strip(), [(c["timestamp"][0], c["timestamp"][1], c["text"].strip()) for c in out["chunks"]]


def _voiced(seed, n):
    rng = np.random.default_rng(seed)
    t = np.arange(n) / 16000
    return (0.3 * np.sin(2 * np.pi * (200 + 300 * seed) * t) * (rng.random(n) > 0.3)).astype(np.float32)


def test_word_timestamps_equal_the_asr_pipelines_window_by_window(speech):
    """A 3 s clip is two windows of the 2 s model: each window's words are the pipeline's for
    that window, the second's shifted by 2 s."""
    clip = _voiced(0, 48000)
    got = speech.generate(audio=[_wav(clip)], max_tokens=20, word_timestamps=True)
    words = [tuple(w) for w in got.meta["listen"]["words"]]
    first_text, first = _pipeline_words(clip[:32000], 20)
    second_text, second = _pipeline_words(clip[32000:], 20)
    assert words == first + [(a + 2.0, b + 2.0, w) for a, b, w in second]
    assert got.text == " ".join(t for t in (first_text, second_text) if t)
    assert len(words) > 3 and words[-1][0] >= 2.0
    plain = speech.generate(audio=[_wav(clip)], max_tokens=20)
    assert "words" not in plain.meta["listen"]


def test_word_timestamps_batched_keep_the_text_and_stay_within_frames_of_alone():
    """Three clips of different lengths in one step: the text is each clip's alone; a word's
    times are within three 20 ms frames of alone (the alignment heads' attention is nearly flat
    in a random model, so dynamic time warping meets ties that batched arithmetic can tip)."""
    from transformers import AutoFeatureExtractor, AutoTokenizer, WhisperForConditionalGeneration

    from omnistage.graph.options import TranscribeOptions
    from omnistage.stages.kinds.speech import TranscribeStage
    from omnistage.stages.worker.stage import StageRequest
    path = ensure_tiny("whisper")
    stage = TranscribeStage(WhisperForConditionalGeneration.from_pretrained(path).eval(),
                            AutoFeatureExtractor.from_pretrained(path), AutoTokenizer.from_pretrained(path),
                            TranscribeOptions(), max_batch=8)
    clips = [_voiced(seed, n) for seed, n in [(0, 24000), (5, 32000), (7, 9000)]]
    for i, clip in enumerate(clips):
        stage.add(StageRequest(f"r{i}", {"audio": _wav(clip)}, {"max_tokens": 20, "word_timestamps": True}))
    out = {o.rid: o for o in stage.step()}
    assert stage.model.config._attn_implementation != "eager"  # (generate switched it for the timing; switched back)
    for i, clip in enumerate(clips):
        text, alone = _pipeline_words(clip, 20)
        words = out[f"r{i}"].meta["words"]
        assert out[f"r{i}"].ports["text"] == text
        assert [w for _, _, w in words] == [w for _, _, w in alone]
        assert max(max(abs(a - c), abs(b - d)) for (a, b, _), (c, d, _) in zip(words, alone)) <= 0.06 + 1e-6
