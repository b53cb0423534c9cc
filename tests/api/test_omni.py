"""Spoken chat and speech on the Qwen2.5-Omni graph (thinker -> talker -> vocoder), with the
official openai client against a real server."""
import base64
import io
import json
import time

import httpx
import openai
import pytest
import yaml

from tests.api.conftest import Server
from tests.conftest import ROOT, mp4_with_sound

MODEL = "omni"


@pytest.fixture(scope="module")
def omni_server(tmp_path_factory):
    # Replies of a known length (64 codec tokens, no early stop), so that speech always starts
    # while a long text is still being written.
    config = yaml.safe_load((ROOT / "examples" / "omni.yaml").read_text())
    config["stages"]["talker"]["options"].update(temperature=0, max_tokens=64, stop_token_ids=[])
    path = tmp_path_factory.mktemp("omni") / "omni.yaml"
    path.write_text(yaml.safe_dump(config))
    with Server(path) as server:
        # Warm every vocoder replica: a worker's first model calls pay one-time set-up.
        pipe = server.server.config.app.state.pipeline
        warm = [pipe.submit(messages=[{"role": "user", "content": "hi"}], max_tokens=8, modalities=["text", "audio"])
                for _ in range(2)]
        [h.result(120) for h in warm]
        yield server


def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0)


def test_streamed_chat_speaks_before_the_text_is_finished(omni_server):
    stream = client(omni_server).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Tell me a story"}], max_tokens=200, temperature=0,
        modalities=["text", "audio"], audio={"voice": "Ethan", "format": "pcm16"}, stream=True,
        extra_body={"ignore_eos": True})
    order, transcript, pcm = [], "", b""
    for chunk in stream:
        for choice in chunk.choices:
            audio = choice.delta.audio
            if audio is None:
                continue
            if audio.get("transcript") if isinstance(audio, dict) else getattr(audio, "transcript", None):
                transcript += audio["transcript"] if isinstance(audio, dict) else audio.transcript
                order.append("text")
            data = audio.get("data") if isinstance(audio, dict) else getattr(audio, "data", None)
            if data:
                pcm += base64.b64decode(data)
                order.append("audio")
    assert transcript and pcm
    last_text = len(order) - 1 - order[::-1].index("text")
    assert order.index("audio") < last_text  # audio began while text was still coming


def test_spoken_reply_and_metrics(omni_server):
    c = client(omni_server)
    reply = c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hello"}], max_tokens=8,
                                      modalities=["text", "audio"], audio={"voice": "Chelsie", "format": "wav"})
    audio = reply.choices[0].message.audio
    assert audio.transcript is not None and base64.b64decode(audio.data)[:4] == b"RIFF"
    metrics = httpx.get(f"{omni_server.url}/metrics").text
    assert "omnistage_time_to_first_audio_seconds_count" in metrics
    assert 'omnistage_stage_first_output_seconds{replica="0",stage="talker"}' in metrics
    assert 'omnistage_stage_real_time_factor{replica="0",stage="vocoder"}' in metrics


def test_speech_endpoint_streams_the_spoken_reply(omni_server):
    with client(omni_server).audio.speech.with_streaming_response.create(
            model=MODEL, voice="Chelsie", input="Say hello", response_format="pcm") as response:
        chunks = list(response.iter_bytes())
    assert sum(len(c) for c in chunks) > 0


def test_unknown_voice_is_a_400_naming_the_voices(omni_server):
    with pytest.raises(openai.BadRequestError) as err:
        client(omni_server).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                                                    modalities=["text", "audio"],
                                                    audio={"voice": "alloy", "format": "wav"})
    assert err.value.body["param"] == "voice" and "Chelsie" in err.value.body["message"]


def _wav(seconds=1.0, freq=330.0):
    import io

    import numpy as np
    import soundfile as sf
    t = np.arange(int(16000 * seconds)) / 16000
    buf = io.BytesIO()
    sf.write(buf, (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), 16000, format="WAV")
    return buf.getvalue()


def test_input_audio_and_transcription_go_through_the_thinker(omni_server):
    c = client(omni_server)
    data = base64.b64encode(_wav()).decode()
    heard = c.chat.completions.create(model=MODEL, max_tokens=6, temperature=0, messages=[{"role": "user", "content": [
        {"type": "input_audio", "input_audio": {"data": data, "format": "wav"}},
        {"type": "text", "text": "What is this?"}]}])
    assert heard.usage.prompt_tokens > 25 and heard.choices[0].message.content is not None  # the clip's positions
    text = c.audio.transcriptions.create(model=MODEL, file=("clip.wav", _wav(), "audio/wav"))
    assert isinstance(text.text, str)


def test_a_picture_and_a_spoken_question_in_one_message(omni_server):
    from PIL import Image
    c = client(omni_server)
    buf = io.BytesIO()
    Image.new("RGB", (56, 56), (30, 160, 60)).save(buf, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    picture = {"type": "image_url", "image_url": {"url": url}}
    sound = {"type": "input_audio", "input_audio": {"data": base64.b64encode(_wav()).decode(), "format": "wav"}}
    question = {"type": "text", "text": "Does it sound like it looks?"}

    def ask(*parts, **kwargs):
        return c.chat.completions.create(model=MODEL, max_tokens=6, temperature=0,
                                         messages=[{"role": "user", "content": [*parts, question]}], **kwargs)
    both = ask(picture, sound, modalities=["text", "audio"], audio={"voice": "Chelsie", "format": "wav"})
    # Each medium adds its own positions to the prompt.
    assert both.usage.prompt_tokens == (ask(picture).usage.prompt_tokens + ask(sound).usage.prompt_tokens
                                        - ask().usage.prompt_tokens)
    spoken = both.choices[0].message.audio  # as OpenAI's: with audio out, the text is its transcript
    assert spoken.transcript and spoken.data


def _mp4(frames=6, width=56, height=56):
    import av
    import numpy as np
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        stream = out.add_stream("mpeg4", rate=2)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(frames):
            frame = np.full((height, width, 3), 30 * i, dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buf.getvalue()


def test_a_video_clip_goes_through_the_thinker_and_is_answered_in_speech(omni_server):
    c = client(omni_server)
    url = "data:video/mp4;base64," + base64.b64encode(_mp4()).decode()
    question = [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": url}},
                                             {"type": "text", "text": "What happens?"}]}]
    plain = c.chat.completions.create(model=MODEL, max_tokens=6, temperature=0, messages=[
        {"role": "user", "content": "What happens?"}])
    watched = c.chat.completions.create(model=MODEL, max_tokens=6, temperature=0, messages=question,
                                        modalities=["text", "audio"], audio={"voice": "Chelsie", "format": "wav"})
    # 6 frames of 56x56: 3 temporal patches of 2x2 merged tokens, between vision start and end
    assert watched.usage.prompt_tokens == plain.usage.prompt_tokens + 3 * 4 + 2
    assert watched.choices[0].message.audio is not None and watched.choices[0].message.audio.data


def test_a_video_with_its_sound_track(omni_server):
    from PIL import Image
    c = client(omni_server)
    frames = [Image.new("RGB", (56, 56), (30 * i, 90, 200)) for i in range(4)]
    url = "data:video/mp4;base64," + base64.b64encode(mp4_with_sound(frames, seconds=2.0)).decode()
    question = [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": url}},
                                             {"type": "text", "text": "What do you hear?"}]}]
    silent = c.chat.completions.create(model=MODEL, max_tokens=4, temperature=0, messages=question)
    heard = c.chat.completions.create(model=MODEL, max_tokens=4, temperature=0, messages=question,
                                      extra_body={"use_audio_in_video": True})
    # 2 s of sound: 50 audio positions, between audio start and end
    assert heard.usage.prompt_tokens - silent.usage.prompt_tokens in range(50, 56)
    with pytest.raises(openai.BadRequestError, match="use_audio_in_video must be true or false"):
        c.chat.completions.create(model=MODEL, max_tokens=4, messages=question, extra_body={"use_audio_in_video": "yes"})


def test_the_omni_client_example_saves_a_spoken_reply(omni_server, tmp_path):
    import importlib.util
    spec = importlib.util.spec_from_file_location("omni_client", ROOT / "examples" / "omni_client.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    got = example.converse(client(omni_server), MODEL, str(tmp_path / "reply.wav"), max_tokens=24)
    assert got["transcript"] and got["audio_seconds"] > 0 and (tmp_path / "reply.wav").stat().st_size > 44


def _pcm24k(seconds=1.0, freq=330.0):
    import numpy as np
    t = np.arange(int(24000 * seconds)) / 24000
    return (0.3 * np.sin(2 * np.pi * freq * t) * 32767).astype("<i2").tobytes()


def _events(ws, until):
    out = []
    while True:
        event = json.loads(ws.recv(timeout=120))
        out.append(event)
        if event["type"] == until:
            return out


def test_realtime_speaks_back_and_keeps_the_conversation(omni_server):
    """A WebSocket client streams audio in, commits it, asks for a response and gets the answer's
    transcript and speech; the answer is equal to the same spoken question sent to chat
    completions; a second turn carries the first as context."""
    from websockets.sync.client import connect
    pcm = _pcm24k()
    url = omni_server.url.replace("http", "ws") + f"/v1/realtime?model={MODEL}"
    with connect(url) as ws:
        assert json.loads(ws.recv(timeout=30))["type"] == "session.created"
        ws.send(json.dumps({"type": "session.update", "session": {
            "voice": "Ethan", "modalities": ["text", "audio"], "max_response_output_tokens": 8, "temperature": 0}}))
        assert _events(ws, "session.updated")[-1]["session"]["voice"] == "Ethan"
        for start in range(0, len(pcm), 9600):  # 0.2 s pieces, as a microphone sends them
            ws.send(json.dumps({"type": "input_audio_buffer.append",
                                "audio": base64.b64encode(pcm[start:start + 9600]).decode()}))
        ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
        ws.send(json.dumps({"type": "response.create"}))
        events = _events(ws, "response.done")
        kinds = [e["type"] for e in events]
        assert "input_audio_buffer.committed" in kinds and "response.created" in kinds
        transcript = "".join(e["delta"] for e in events if e["type"] == "response.audio_transcript.delta")
        speech = b"".join(base64.b64decode(e["delta"]) for e in events if e["type"] == "response.audio.delta")
        assert transcript and len(speech) > 2400 and events[-1]["response"]["status"] == "completed"
        assert next(e for e in events if e["type"] == "response.audio_transcript.done")["transcript"] == transcript
        first_prompt = events[-1]["response"]["usage"]["input_tokens"]
        ws.send(json.dumps({"type": "conversation.item.create", "item": {
            "type": "message", "role": "user", "content": [{"type": "input_text", "text": "And then?"}]}}))
        ws.send(json.dumps({"type": "response.create"}))
        second = _events(ws, "response.done")
        assert second[-1]["response"]["usage"]["input_tokens"] > first_prompt  # the first turn is context
    wav = io.BytesIO()
    import numpy as np
    import soundfile as sf
    sf.write(wav, np.frombuffer(pcm, dtype="<i2"), 24000, format="WAV", subtype="PCM_16")
    same = client(omni_server).chat.completions.create(
        model=MODEL, max_tokens=8, temperature=0, messages=[{"role": "user", "content": [
            {"type": "input_audio", "input_audio": {"data": base64.b64encode(wav.getvalue()).decode(), "format": "wav"}}]}])
    assert same.choices[0].message.content == transcript


def test_realtime_cancel_stops_the_response_in_every_stage(omni_server):
    from websockets.sync.client import connect
    url = omni_server.url.replace("http", "ws") + "/v1/realtime"
    pipe = omni_server.pipeline
    with connect(url) as ws:
        ws.recv(timeout=30)
        ws.send(json.dumps({"type": "session.update", "session": {"max_response_output_tokens": 400}}))
        ws.send(json.dumps({"type": "conversation.item.create", "item": {
            "type": "message", "role": "user", "content": [{"type": "input_text", "text": "Tell me a long story"}]}}))
        ws.send(json.dumps({"type": "response.create", "response": {}}))
        _events(ws, "response.audio.delta")  # speaking
        assert pipe.orchestrator.requests
        ws.send(json.dumps({"type": "response.cancel"}))
        done = _events(ws, "response.done")[-1]
        assert done["response"]["status"] == "cancelled" and not pipe.orchestrator.requests
        ws.send(json.dumps({"type": "response.cancel"}))  # nothing left to cancel
        assert _events(ws, "error")[-1]["error"]["code"] == "response_cancel_not_active"
        ws.send(json.dumps({"type": "input_audio_buffer.commit"}))  # an empty buffer
        assert _events(ws, "error")[-1]["error"]["param"] == "input_audio_buffer"
        ws.send(json.dumps({"type": "session.update", "session": {"voice": 3}}))
        assert _events(ws, "error")[-1]["error"]["param"] == "session.voice"
    deadline = time.monotonic() + 10  # (replicas report their numbers every 0.5 s)
    while time.monotonic() < deadline:
        running = {r.name: r.stats.get("running", 0) for r in pipe.orchestrator.table.all()}
        if not any(running.values()):
            break
        time.sleep(0.1)
    assert not any(running.values()), running
