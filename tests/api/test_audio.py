"""/v1/audio/speech and /v1/audio/transcriptions with the official openai client and httpx."""
import base64
import io
import json
import struct

import httpx
import numpy as np
import openai
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer, SpeechT5ForTextToSpeech, SpeechT5HifiGan

from omnistage.models.tiny import ensure_tiny

MODEL = "omnistage-tiny"
# httpx's own 5 s timeout is too short for a speech request on a loaded machine; no kept-alive
# connections, since the servers of these tests come and go.
HTTP = httpx.Client(timeout=120, limits=httpx.Limits(max_keepalive_connections=0))


def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0)


@pytest.fixture(scope="module")
def speech_reference():
    path = ensure_tiny("speecht5")
    model, tok = SpeechT5ForTextToSpeech.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)
    vocoder, voices = SpeechT5HifiGan.from_pretrained(path / "vocoder").eval(), load_file(str(path / "voices.safetensors"))

    def run(text, voice):
        with torch.inference_mode():
            return model.generate(torch.tensor([tok(text)["input_ids"]]), speaker_embeddings=voices[voice][None],
                                  vocoder=vocoder).numpy()
    return run


def test_speech_wav_equals_speecht5(default_server, speech_reference):
    audio = client(default_server).audio.speech.create(model=MODEL, input="hello there how are you", voice="nova",
                                                       response_format="wav")
    data = audio.content
    assert data[:4] == b"RIFF" and struct.unpack("<I", data[24:28])[0] == 16000
    got = np.frombuffer(data[44:], dtype=np.int16).astype(np.float32) / 32767
    ref = speech_reference("hello there how are you", "nova")
    assert got.shape == ref.shape and np.abs(got - ref).max() < 2e-4  # 16-bit rounding


def test_speech_streams_in_chunks(default_server):
    c = client(default_server)
    sizes = []
    with c.audio.speech.with_streaming_response.create(model=MODEL, input="the quick brown fox jumps over the dog",
                                                       voice="alloy", response_format="pcm") as response:
        assert response.headers["content-type"] == "audio/pcm"
        for piece in response.iter_bytes():
            sizes.append(len(piece))
    total = sum(sizes)
    assert total % 2 == 0 and total > 24000  # > 0.5 s of 16-bit samples at 24 kHz
    assert len([s for s in sizes if s]) > 2  # arrived as the vocoder produced it


def test_speech_flac_and_speed(default_server):
    c = client(default_server)
    normal = sf.read(io.BytesIO(c.audio.speech.create(model=MODEL, input="a red cat", voice="echo",
                                                      response_format="flac").content))
    fast = sf.read(io.BytesIO(c.audio.speech.create(model=MODEL, input="a red cat", voice="echo",
                                                    response_format="flac", speed=2.0).content))
    assert normal[1] == fast[1] == 16000
    assert abs(len(fast[0]) - len(normal[0]) / 2) <= 256  # one vocoder hop


def test_speech_sent_whole_says_its_usage_in_headers(default_server):
    """stream false: the same bytes as the stream, at once, with x-usage-* headers that equal the
    usage of the server-sent events' done event (flac is whole anyway and has them too)."""
    body = {"input": "one two three", "voice": "echo", "response_format": "pcm"}
    streamed = HTTP.post(f"{default_server.url}/v1/audio/speech", json=body)
    assert not any(k.startswith("x-usage-") for k in streamed.headers)  # (headers go before the audio is made)
    whole = HTTP.post(f"{default_server.url}/v1/audio/speech", json={**body, "stream": False})
    assert whole.status_code == 200 and whole.content == streamed.content
    with HTTP.stream("POST", f"{default_server.url}/v1/audio/speech", json={**body, "stream_format": "sse"}) as r:
        done = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")][-1]["usage"]
    assert {k: whole.headers[f"x-usage-{k.replace('_', '-')}"] for k in done} == {k: str(v) for k, v in done.items()}
    assert float(whole.headers["x-usage-audio-seconds"]) == pytest.approx(len(whole.content) / 2 / 24000, abs=0.01)
    flac = HTTP.post(f"{default_server.url}/v1/audio/speech", json={**body, "response_format": "flac"})
    assert flac.headers["x-usage-audio-seconds"] == whole.headers["x-usage-audio-seconds"]


def test_speech_mp3_opus_aac_stream_the_wav_s_audio_and_mp3_is_the_default(default_server):
    """Every compressed format streams (several pieces) and decodes to as much audio as the wav
    holds (resampled to 24 kHz; the tiny vocoder's speech is too quiet for 16-bit, so its fidelity
    is tested on a real signal in test_audio_codecs); no response_format gives mp3, as OpenAI's."""
    from tests.api.test_audio_codecs import decoded
    c = client(default_server)
    text = "the quick brown fox jumps over the lazy dog"
    wav = c.audio.speech.create(model=MODEL, input=text, voice="alloy", response_format="wav").content
    seconds = (len(wav) - 44) / 2 / 16000
    for fmt, media in (("mp3", "audio/mpeg"), ("opus", "audio/ogg"), ("aac", "audio/aac")):
        with c.audio.speech.with_streaming_response.create(model=MODEL, input=text, voice="alloy",
                                                           response_format=fmt) as response:
            assert response.headers["content-type"] == media
            pieces = [p for p in response.iter_bytes() if p]
        assert len(pieces) > 1, fmt
        got = decoded(b"".join(pieces), 24000)
        assert abs(len(got) / 24000 - seconds) < 0.15, fmt  # codec delay and padding: a few frames
    default = c.audio.speech.create(model=MODEL, input="hi there", voice="alloy").content
    assert default[:3] == b"ID3"  # an MP3 stream


def test_speech_as_server_sent_events_carries_the_same_audio(default_server):
    """stream_format sse: speech.audio.delta events whose base64 audio joins into the bytes the
    plain stream gives, then speech.audio.done with the usage."""
    import json
    body = {"input": "the quick brown fox", "voice": "alloy", "response_format": "pcm"}
    plain = HTTP.post(f"{default_server.url}/v1/audio/speech", json=body, timeout=120).content
    events = []
    with HTTP.stream("POST", f"{default_server.url}/v1/audio/speech", json={**body, "stream_format": "sse"},
                      timeout=120) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]
    assert [e["type"] for e in events[:-1]] == ["speech.audio.delta"] * (len(events) - 1) and len(events) > 2
    assert b"".join(base64.b64decode(e["audio"]) for e in events[:-1]) == plain
    assert events[-1]["type"] == "speech.audio.done"
    assert events[-1]["usage"]["audio_seconds"] == pytest.approx(len(plain) / 2 / 24000, abs=0.01)


@pytest.mark.parametrize("body, param", [
    ({"input": "hi", "stream_format": "chunks"}, "stream_format"),
    ({"input": "hi", "stream": "no"}, "stream"), ({"input": "hi", "stream": False, "stream_format": "sse"}, "stream"),
    ({"input": "hi", "voice": "bob"}, "voice"), ({"input": "hi", "speed": 9}, "speed"),
    ({"input": ""}, "input"), ({"input": "hi", "response_format": "ogg"}, "response_format"),
    ({"input": "hi", "vioce": "echo"}, "vioce"), ({"input": "hi", "speed": "fast"}, "speed"),
    ({"input": "hi", "instructions": "whisper it"}, "instructions"), ({"input": "hi", "seed": 3}, "seed"),
])
def test_bad_speech_requests(default_server, body, param):
    r = HTTP.post(f"{default_server.url}/v1/audio/speech", json=body)
    assert r.status_code == 400 and r.json()["error"]["param"] == param


def test_transcription_upload(default_server):
    buf = io.BytesIO()
    sf.write(buf, (np.sin(np.arange(16000) * 440 / 16000 * 2 * np.pi) * 0.3).astype(np.float32), 16000, format="WAV")
    out = client(default_server).audio.transcriptions.create(model=MODEL, file=("tone.wav", buf.getvalue()))
    assert isinstance(out.text, str) and out.text
    plain = HTTP.post(f"{default_server.url}/v1/audio/transcriptions", data={"response_format": "text"},
                       files={"file": ("tone.wav", buf.getvalue(), "audio/wav")})
    assert plain.status_code == 200 and plain.text == out.text
    assert int(plain.headers["x-usage-output-tokens"]) == out.usage.output_tokens > 0


def test_transcription_segments_srt_and_vtt(default_server):
    """A 5 s clip is three windows of the tiny Whisper (2 s): verbose_json gives each window that
    says something as a segment with its times, and the duration; srt and vtt are those cues;
    the segments' texts make the transcript."""
    buf = io.BytesIO()
    t = np.arange(16000 * 5) / 16000
    sf.write(buf, (np.sin(2 * np.pi * 440 * t) * 0.3).astype(np.float32), 16000, format="WAV")
    c = client(default_server)
    verbose = c.audio.transcriptions.create(model=MODEL, file=("tone.wav", buf.getvalue()),
                                            response_format="verbose_json")
    assert verbose.duration == 5.0 and verbose.task == "transcribe"
    spans = [(s.start, s.end) for s in verbose.segments]
    assert spans and set(spans) <= {(0.0, 2.0), (2.0, 4.0), (4.0, 5.0)}
    assert verbose.text == " ".join(s.text for s in verbose.segments)
    srt = c.audio.transcriptions.create(model=MODEL, file=("tone.wav", buf.getvalue()), response_format="srt")
    first = verbose.segments[0]
    assert srt.startswith(f"1\n00:00:0{int(first.start)},000 --> 00:00:0{int(first.end)},000\n{first.text}\n")
    vtt = c.audio.transcriptions.create(model=MODEL, file=("tone.wav", buf.getvalue()), response_format="vtt")
    assert vtt.startswith("WEBVTT\n\n") and f"00:00:0{int(first.start)}.000 --> " in vtt
    assert vtt.count(" --> ") == srt.count(" --> ") == len(verbose.segments)
    assert "x-usage-output-tokens" in c.audio.transcriptions.with_raw_response.create(
        model=MODEL, file=("tone.wav", buf.getvalue()), response_format="srt").headers


def test_translation_language_and_prompt(default_server):
    """/v1/audio/translations runs Whisper's translate task; transcription takes a language and a
    prompt, which change the transcript, and verbose_json names the language (detected when not
    given); a language the model lacks is refused by name, and so are word timestamps without
    verbose_json."""
    buf = io.BytesIO()
    sf.write(buf, (np.random.default_rng(5).standard_normal(16000) * 0.1).astype(np.float32), 16000, format="WAV")
    wav, c = buf.getvalue(), client(default_server)
    plain = c.audio.transcriptions.create(model=MODEL, file=("a.wav", wav), response_format="verbose_json")
    assert plain.language in ("english", "french", "german", "spanish", "chinese")
    french = c.audio.transcriptions.create(model=MODEL, file=("a.wav", wav), language="fr", response_format="verbose_json")
    assert french.language == "french"
    moved = {c.audio.transcriptions.create(model=MODEL, file=("a.wav", wav), **kw).text
             for kw in ({}, {"language": "fr"}, {"language": "de"}, {"prompt": "red green blue"}, {"temperature": 0})}
    assert len(moved) >= 3
    translated = c.audio.translations.create(model=MODEL, file=("a.wav", wav), response_format="verbose_json")
    assert translated.task == "translate" and isinstance(translated.text, str)
    with pytest.raises(openai.BadRequestError) as err:
        c.audio.transcriptions.create(model=MODEL, file=("a.wav", wav), language="xx")
    assert err.value.body["param"] == "language"
    with pytest.raises(openai.BadRequestError) as err:
        c.audio.transcriptions.create(model=MODEL, file=("a.wav", wav), timestamp_granularities=["word"])
    assert err.value.body["param"] in ("timestamp_granularities", "timestamp_granularities[]")


def test_word_timestamps_through_the_openai_client(default_server):
    """timestamp_granularities word gives verbose_json words in the clip's time (the openai client
    sends the list as repeated form fields); segments only when asked too; a bad value is refused."""
    buf = io.BytesIO()
    t = np.arange(16000 * 3) / 16000
    sf.write(buf, (np.sin(2 * np.pi * 300 * t) * 0.3 * (t % 0.5 < 0.3)).astype(np.float32), 16000, format="WAV")
    wav, c = buf.getvalue(), client(default_server)
    words = c.audio.transcriptions.create(model=MODEL, file=("a.wav", wav), response_format="verbose_json",
                                          timestamp_granularities=["word"])
    assert words.words and words.segments is None
    assert all(0 <= w.start <= w.end for w in words.words) and {type(w.word) for w in words.words} == {str}
    assert [w.start for w in words.words] == sorted(w.start for w in words.words)
    both = c.audio.transcriptions.create(model=MODEL, file=("a.wav", wav), response_format="verbose_json",
                                         timestamp_granularities=["word", "segment"])
    assert both.words == words.words and both.segments and both.text == words.text
    bad = HTTP.post(f"{default_server.url}/v1/audio/transcriptions", files={"file": ("a.wav", wav, "audio/wav")},
                     data={"timestamp_granularities[]": "letter", "response_format": "verbose_json"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "timestamp_granularities"
    r = HTTP.post(f"{default_server.url}/v1/audio/transcriptions", files={"file": ("a.wav", wav, "audio/wav")},
                   data={"response_format": "verbose_json", "timestamp_granularities[]": "word"})
    assert r.status_code == 200 and [w["word"] for w in r.json()["words"]] == [w.word for w in words.words]


def test_a_streamed_transcript_joins_into_the_whole(default_server):
    import json
    buf = io.BytesIO()
    t = np.arange(16000 * 5) / 16000
    sf.write(buf, (np.sin(2 * np.pi * 440 * t) * 0.3).astype(np.float32), 16000, format="WAV")
    url = f"{default_server.url}/v1/audio/transcriptions"
    files = {"file": ("tone.wav", buf.getvalue(), "audio/wav")}
    whole = HTTP.post(url, files=files, timeout=120).json()
    with HTTP.stream("POST", url, data={"stream": "true"}, files=files, timeout=120) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]
    assert {e["type"] for e in events[:-1]} <= {"transcript.text.delta"} and events[-1]["type"] == "transcript.text.done"
    assert "".join(e["delta"] for e in events[:-1]) == events[-1]["text"] == whole["text"]
    assert events[-1]["usage"]["output_tokens"] == whole["usage"]["output_tokens"]
    refused = HTTP.post(url, data={"stream": "true", "response_format": "srt"}, files=files)
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "response_format"


def test_bad_transcriptions(default_server):
    url = f"{default_server.url}/v1/audio/transcriptions"
    missing = HTTP.post(url, data={"model": MODEL})
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "file"
    garbage = HTTP.post(url, files={"file": ("x.wav", b"not audio at all", "audio/wav")})
    assert garbage.status_code == 400 and garbage.json()["error"]["param"] == "file"
    long = io.BytesIO()
    sf.write(long, np.zeros(16000 * 5, dtype=np.float32), 16000, format="WAV")
    windows = HTTP.post(url, files={"file": ("long.wav", long.getvalue(), "audio/wav")})
    assert windows.status_code == 200 and windows.json()["usage"]["output_tokens"] == _silence_tokens([2, 2, 1], 32)


def _silence_tokens(seconds, budget):
    """Tokens Whisper's generate makes for windows of silence of these lengths (up to eos)."""
    from transformers import AutoFeatureExtractor, WhisperForConditionalGeneration
    path = ensure_tiny("whisper")
    model = WhisperForConditionalGeneration.from_pretrained(path).eval()
    extractor, eos = AutoFeatureExtractor.from_pretrained(path), model.generation_config.eos_token_id
    total = 0
    for s in seconds:
        feats = extractor([np.zeros(16000 * s, np.float32)], sampling_rate=16000, return_tensors="pt").input_features
        with torch.inference_mode():
            row = model.generate(feats, max_new_tokens=budget, task="transcribe")[0].tolist()
        total += len(row[:row.index(eos)] if eos in row else row)
    return total


def test_chat_with_a_spoken_reply(default_server, speech_reference):
    c = client(default_server)
    messages = [{"role": "user", "content": "Say something"}]
    text = c.chat.completions.create(model=MODEL, messages=messages, max_tokens=6, temperature=0)
    spoken = c.chat.completions.create(model=MODEL, messages=messages, max_tokens=6, temperature=0,
                                       modalities=["text", "audio"], audio={"voice": "alloy", "format": "wav"})
    message = spoken.choices[0].message
    assert message.content is None and message.audio.transcript == text.choices[0].message.content
    wav = base64.b64decode(message.audio.data)
    got = np.frombuffer(wav[44:], dtype=np.int16).astype(np.float32) / 32767
    ref = speech_reference(message.audio.transcript, "alloy")
    assert got.shape == ref.shape and np.abs(got - ref).max() < 2e-4


def test_streamed_chat_with_audio_deltas(default_server):
    stream = client(default_server).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Say something"}], max_tokens=6, temperature=0,
        modalities=["text", "audio"], audio={"voice": "alloy", "format": "pcm16"}, stream=True)
    transcript, pcm, expiry = "", b"", None
    for chunk in stream:
        for choice in chunk.choices:
            if choice.delta.audio is not None:
                transcript += choice.delta.audio.transcript or ""
                pcm += base64.b64decode(choice.delta.audio.data or "")
                expiry = choice.delta.audio.expires_at or expiry
    assert transcript and len(pcm) > 24000 and expiry  # > 0.5 s at 24 kHz, 16-bit


def test_spoken_chat_needs_a_voice_and_a_stream_format(default_server):
    c = client(default_server)
    kw = dict(model=MODEL, messages=[{"role": "user", "content": "hi"}], modalities=["text", "audio"])
    with pytest.raises(openai.BadRequestError, match="voice"):
        c.chat.completions.create(**kw)
    with pytest.raises(openai.BadRequestError, match="pcm16 when streaming"):
        c.chat.completions.create(**kw, audio={"voice": "alloy", "format": "wav"}, stream=True)


def test_chat_asking_for_audio_on_a_graph_without_spoken_replies(vl_server):
    with pytest.raises(openai.BadRequestError) as err:
        client(vl_server).chat.completions.create(model="vl-chat", modalities=["text", "audio"],
                                                  audio={"voice": "alloy", "format": "wav"},
                                                  messages=[{"role": "user", "content": "hi"}])
    assert "cannot produce audio" in err.value.body["message"]


def test_streamed_resampling_equals_resampling_the_whole_clip():
    import soxr

    from omnistage.api.audio import Resampler
    clip = torch.randn(40000, generator=torch.Generator().manual_seed(0))
    resampler, parts, at = Resampler(16000), [], 0
    for size in (4096, 1000, 3, 8192, 777, 20000):
        parts.append(resampler.feed(clip[at:at + size]))
        at += size
    parts.append(resampler.feed(clip[at:], last=True))
    whole = torch.from_numpy(soxr.resample(clip.numpy(), 16000, 24000))
    assert torch.allclose(torch.cat(parts), whole, atol=1e-6)
