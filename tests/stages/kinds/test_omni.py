"""Qwen2.5-Omni as thinker -> talker -> vocoder stages, against the reference generate."""
import io

import numpy as np
import pytest
import torch
import yaml

from omnistage.checkpoints import resolve_model
from omnistage.errors import RequestRejected
from omnistage.graph.compile import compile_file
from omnistage.pipeline import Pipeline
from omnistage.stages.kinds.ar import build as build_ar
from omnistage.stages.kinds.omni import build_talker
from omnistage.stages.runtime.handle import ChunkEvent, DoneEvent
from omnistage.stages.worker.stage import StageRequest
from tests.conftest import ROOT, mp4_with_sound

QUESTION = [{"role": "user", "content": "Tell me a story about a cat"}]


def omni_yaml(tmp_path, talker=None, vocoder=None, thinker=None, single_dir=False):
    """examples/omni.yaml with stage options changed; ``single_dir``: every stage loads its
    component of the whole checkpoint (as released) instead of its own sub-model directory."""
    config = yaml.safe_load((ROOT / "examples" / "omni.yaml").read_text())
    if single_dir:
        config["models"] = {sub: {"path": "tiny:qwen2.5-omni", "component": sub}
                            for sub in ("thinker", "talker", "token2wav")}
    for stage, options in (("thinker", thinker), ("talker", talker), ("vocoder", vocoder)):
        config["stages"][stage]["options"].update(options or {})
    path = tmp_path / "omni.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


# The reference's defaults are kept (repetition penalty 1.05) except for greedy choice. One
# unpadded request: the reference conditions the talker without the codec start embeddings and
# with 1-D positions (see omni/reply.py).
GREEDY_TALKER = {"temperature": 0, "max_tokens": 40, "reference_unpadded": True}


def test_talker_codes_equal_the_reference_while_fed_token_by_token(tmp_path, omni_reference):
    run, _ = omni_reference
    plan = compile_file(omni_yaml(tmp_path, talker=GREEDY_TALKER), resolve_model)
    thinker, talker = build_ar(plan.stages["thinker"], "cpu"), build_talker(plan.stages["talker"], "cpu")
    thinker.add(StageRequest("r", {"messages": QUESTION}, {"max_tokens": 12, "temperature": 0}))
    text, codes, talker_ran_early = [], [], False
    while thinker.has_work():
        for out in thinker.step():
            text += out.ports["tokens"]
            states = out.ports["states"]
            if "r" in talker.replies or states.prompt is not None:
                if states.prompt is not None:
                    talker.add(StageRequest("r", {"states": [states]}, {}, frozenset({"states"})))
                else:
                    talker.feed("r", "states", [states], False)
            if out.finished:
                talker.feed("r", "states", [], True)
        while talker.has_work():
            codes += [c for o in talker.step() for c in o.ports["codes"]]
            talker_ran_early = talker_ran_early or thinker.has_work()
    while talker.has_work():
        codes += [c for o in talker.step() for c in o.ports["codes"]]
    ref_text, ref_codes, _ = run(QUESTION, 12, 40, seed=0)
    assert text == ref_text
    assert codes == ref_codes and len(codes) > 5
    assert talker_ran_early


@pytest.mark.parametrize("single_dir", [False, True], ids=["sub-model-dirs", "released-single-dir"])
def test_text_and_waveform_equal_the_reference_through_workers(tmp_path, omni_reference, single_dir):
    run, tok = omni_reference
    path = omni_yaml(tmp_path, talker=GREEDY_TALKER, vocoder={"chunk_codes": 0}, single_dir=single_dir)
    with Pipeline.from_yaml(path) as pipe:
        result = pipe.submit(messages=QUESTION, max_tokens=12, temperature=0, seed=11,
                             modalities=["text", "audio"]).result(120)
    ref_text, ref_codes, ref_wav = run(QUESTION, 12, 40, seed=11)
    assert result.text == tok.decode(ref_text, skip_special_tokens=True)
    assert result.meta["talker"]["codec_tokens"] == len(ref_codes) + 1  # the stop token counts
    torch.testing.assert_close(result.outputs["audio"], ref_wav, atol=1e-5, rtol=0)


def test_spoken_question_in_speech_out_equals_the_reference(tmp_path, omni_reference):
    """Audio in (the thinker's own audio tower), text and speech out."""
    run, tok = omni_reference
    t = np.arange(int(16000 * 1.3)) / 16000
    clip = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    messages = [{"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": "What is this sound?"}]}]
    path = omni_yaml(tmp_path, talker=GREEDY_TALKER, vocoder={"chunk_codes": 0})
    with Pipeline.from_yaml(path) as pipe:
        result = pipe.submit(messages=messages, audio=[{"array": clip, "sampling_rate": 16000}], max_tokens=10,
                             temperature=0, seed=5, modalities=["text", "audio"]).result(120)
    ref_text, _, ref_wav = run(messages, 10, 40, seed=5, clips=[clip])
    assert result.text == tok.decode(ref_text, skip_special_tokens=True)
    assert result.usage["prompt_tokens"] > 40  # the clip's positions
    torch.testing.assert_close(result.outputs["audio"], ref_wav, atol=1e-5, rtol=0)


def test_image_in_text_and_speech_out_equal_the_reference(tmp_path, omni_reference):
    """An image through the thinker's vision tower; the talker in the reference's unpadded way
    takes 1-D positions while the thinker's are M-RoPE."""
    from PIL import Image
    run, tok = omni_reference
    image = Image.new("RGB", (90, 70), (200, 30, 30))
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]}]
    path = omni_yaml(tmp_path, talker=GREEDY_TALKER, vocoder={"chunk_codes": 0})
    with Pipeline.from_yaml(path) as pipe:
        result = pipe.submit(messages=messages, images=[image], max_tokens=10, temperature=0, seed=9,
                             modalities=["text", "audio"]).result(120)
    ref_text, _, ref_wav = run(messages, 10, 40, seed=9, images=[image])
    assert result.text == tok.decode(ref_text, skip_special_tokens=True)
    torch.testing.assert_close(result.outputs["audio"], ref_wav, atol=1e-5, rtol=0)


def test_image_and_audio_in_one_request_equal_the_reference(tmp_path, omni_reference):
    """An image and a spoken question in one message: both towers, M-RoPE positions over both."""
    from PIL import Image
    run, tok = omni_reference
    image = Image.new("RGB", (90, 70), (30, 30, 200))
    t = np.arange(int(16000 * 0.9)) / 16000
    clip = (0.3 * np.sin(2 * np.pi * 330 * t)).astype(np.float32)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "audio"},
                                             {"type": "text", "text": "Does the sound match the picture?"}]}]
    path = omni_yaml(tmp_path, talker=GREEDY_TALKER, vocoder={"chunk_codes": 0})
    with Pipeline.from_yaml(path) as pipe:
        result = pipe.submit(messages=messages, images=[image], audio=[{"array": clip, "sampling_rate": 16000}],
                             max_tokens=10, temperature=0, seed=4, modalities=["text", "audio"]).result(120)
    ref_text, _, ref_wav = run(messages, 10, 40, seed=4, clips=[clip], images=[image])
    assert result.text == tok.decode(ref_text, skip_special_tokens=True)
    torch.testing.assert_close(result.outputs["audio"], ref_wav, atol=1e-5, rtol=0)


def test_video_in_text_and_speech_out_equal_the_reference(tmp_path, omni_reference):
    """A clip of frames through the thinker's vision tower, its temporal positions spaced by the
    seconds each temporal patch spans (frames taken at 2 per second)."""
    from PIL import Image
    run, tok = omni_reference
    frames = [Image.new("RGB", (84, 56), (40 * i, 200 - 30 * i, 90)) for i in range(5)]  # odd: last repeated
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What happens?"}]}]
    path = omni_yaml(tmp_path, talker=GREEDY_TALKER, vocoder={"chunk_codes": 0})
    with Pipeline.from_yaml(path) as pipe:
        result = pipe.submit(messages=messages, video=frames, max_tokens=10, temperature=0, seed=9,
                             modalities=["text", "audio"]).result(120)
    ref_text, _, ref_wav = run(messages, 10, 40, seed=9, frames=frames)
    assert result.text == tok.decode(ref_text, skip_special_tokens=True)
    torch.testing.assert_close(result.outputs["audio"], ref_wav, atol=1e-5, rtol=0)


def test_a_video_file_is_placed_in_time_by_its_own_frame_rate(tmp_path, omni_reference):
    """An MP4 at 1 frame per second keeps every frame; its temporal patches are 2 s apart."""
    import av
    from PIL import Image

    from omnistage.encoders.media import load_video
    run, tok = omni_reference
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        stream = out.add_stream("mpeg4", rate=1)
        stream.width, stream.height, stream.pix_fmt = 84, 56, "yuv420p"
        for i in range(4):
            frame = Image.new("RGB", (84, 56), (60 * i, 200 - 40 * i, 90))
            for packet in stream.encode(av.VideoFrame.from_image(frame)):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    clip = load_video(buf.getvalue())
    assert clip.fps == 1.0 and len(clip.frames) == 4
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What happens?"}]}]
    with Pipeline.from_yaml(omni_yaml(tmp_path)) as pipe:
        result = pipe.submit(messages=messages, video=buf.getvalue(), max_tokens=10, temperature=0).result(120)
    ref_text, _, _ = run(messages, 10, 2, seed=0, frames=clip.frames, fps=1.0)
    assert result.text == tok.decode(ref_text, skip_special_tokens=True)


def test_a_video_with_its_sound_track_equals_the_reference(tmp_path, omni_reference):
    """use_audio_in_video: the file's sound interleaved with its frames in 2-s chunks, as the
    reference processor lays them out; text and speech out equal the reference's."""
    from PIL import Image

    from omnistage.encoders.media import load_video, load_video_audio
    run, tok = omni_reference
    frames = [Image.new("RGB", (84, 56), (40 * i, 200 - 30 * i, 90)) for i in range(10)]  # 5 s at 2 per second
    data = mp4_with_sound(frames, seconds=5.0)
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What do you see and hear?"}]}]
    path = omni_yaml(tmp_path, talker=GREEDY_TALKER, vocoder={"chunk_codes": 0})
    with Pipeline.from_yaml(path) as pipe:
        result = pipe.submit(messages=messages, video=data, use_audio_in_video=True, max_tokens=10, temperature=0,
                             seed=6, modalities=["text", "audio"]).result(120)
        silent = pipe.submit(messages=messages, video=data, max_tokens=10, temperature=0).result(120)
    clip = load_video(data)
    ref_text, _, ref_wav = run(messages, 10, 40, seed=6, frames=clip.frames, fps=clip.fps,
                               sound=load_video_audio(data, 16000))
    assert result.text == tok.decode(ref_text, skip_special_tokens=True)
    torch.testing.assert_close(result.outputs["audio"], ref_wav, atol=1e-5, rtol=0)
    # The sound track's positions come on top of the frames' (and the bracketing audio tokens).
    assert result.usage["prompt_tokens"] > silent.usage["prompt_tokens"] + 100


@pytest.fixture(scope="module")
def streaming_pipe(tmp_path_factory):
    # Replies of a known length: 64 codec tokens, no early stop.
    path = omni_yaml(tmp_path_factory.mktemp("omni"), thinker={"max_tokens": 400},
                     talker={"temperature": 0, "max_tokens": 64, "stop_token_ids": []},
                     vocoder={"chunk_codes": 4, "left_context_codes": 4})
    with Pipeline.from_yaml(path) as pipe:
        # Warm every vocoder replica: a worker's first model calls pay one-time set-up.
        warm = [pipe.submit(messages=QUESTION, max_tokens=8, modalities=["text", "audio"]) for _ in range(2)]
        [h.result(120) for h in warm]
        yield pipe


def test_first_audio_comes_before_the_thinker_finishes_its_text(streaming_pipe):
    handle = streaming_pipe.submit(messages=QUESTION, max_tokens=300, ignore_eos=True, temperature=0,
                                   modalities=["text", "audio"])
    events = list(handle.events(120))
    kinds = [e.modality for e in events if isinstance(e, ChunkEvent)]
    first_audio = kinds.index("audio")
    last_text = len(kinds) - 1 - kinds[::-1].index("text")
    assert first_audio < last_text
    assert isinstance(events[-1], DoneEvent) and events[-1].meta["thinker"]["completion_tokens"] == 300
    assert kinds.count("audio") > 2  # streamed in chunks
    # The vocoder is the slowest stage here: its input queues, and nothing is lost or repeated
    # (64 codec tokens x 2 mel frames x 240 samples).
    audio = [e.value for e in events if isinstance(e, ChunkEvent) and e.modality == "audio"]
    assert sum(a.numel() for a in audio) == 64 * 2 * 240


def test_text_only_requests_never_reach_the_talker_and_use_the_prefix_cache(streaming_pipe):
    ask = [{"role": "user", "content": "A question long enough to fill a few KV blocks of the thinker, twice."}]
    first, second = (streaming_pipe.submit(messages=ask, max_tokens=5, modalities=["text"]).result(60)
                     for _ in range(2))
    assert set(first.meta) == {"thinker"} and "audio" not in first.outputs
    assert second.meta["thinker"]["cached_tokens"] > 0
    spoken = streaming_pipe.submit(messages=ask, max_tokens=5, modalities=["text", "audio"]).result(60)
    assert spoken.meta["thinker"]["cached_tokens"] == 0  # the talker needs every prompt position's states
    assert spoken.outputs["audio"].numel() > 0


def test_an_unknown_voice_is_refused_at_submit(streaming_pipe):
    with pytest.raises(RequestRejected, match="Chelsie") as err:
        streaming_pipe.submit(messages=QUESTION, modalities=["text", "audio"], voice="alloy")
    assert err.value.param == "voice"
