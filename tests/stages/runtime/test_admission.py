"""Image+text chat through real encode -> prefill -> decode workers, against HF generate."""
import base64
import io

import pytest
import torch
from PIL import Image

from omnistage import Pipeline
from omnistage.errors import RequestRejected
from omnistage.models.tiny import ensure_tiny
from tests.conftest import ROOT

IMAGE = {"type": "image"}


def text(s):
    return {"type": "text", "text": s}


def picture(seed, h, w):
    g = torch.Generator().manual_seed(seed)
    return Image.fromarray((torch.rand(h, w, 3, generator=g) * 255).byte().numpy())


def png(image):
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def reference(vl_reference):
    return lambda content, images, new=12: vl_reference(content, images, new=new)[1]


@pytest.fixture(scope="module")
def epd():
    with Pipeline.from_yaml(ROOT / "examples" / "vl_chat_epd.yaml") as pipe:
        yield pipe


def ask(pipe, content, images, **kw):
    kwargs = dict(messages=[{"role": "user", "content": content}], temperature=0, max_tokens=12, **kw)
    if images:
        kwargs["images"] = [png(im) for im in images]
    return pipe.submit(**kwargs)


def test_mixed_batch_equals_hf_generate(epd, reference):
    cases = [([IMAGE, text("Describe the image.")], [picture(0, 56, 56)]),
             ("Hello there, just text", []),
             ([IMAGE, text("and"), IMAGE, text("compare them")], [picture(1, 84, 112), picture(2, 112, 56)]),
             ([text("Look:"), IMAGE], [picture(3, 140, 84)])]
    handles = [ask(epd, c, ims) for c, ims in cases]
    for (content, images), handle in zip(cases, handles):
        assert handle.result(60).text == reference(content, images)


def test_repeated_image_skips_the_encoder_and_a_changed_pixel_does_not(epd, reference):
    content, image = [IMAGE, text("What is in this picture?")], picture(10, 84, 84)
    first = ask(epd, content, [image]).result(60)
    assert "vision" in first.meta
    again = ask(epd, content, [image]).result(60)
    assert "vision" not in again.meta  # the prefix cache held its KV: no encoding at all
    assert again.meta["decode"]["cached_tokens"] > 0 and again.text == first.text
    changed = image.copy()
    changed.putpixel((5, 5), (0, 0, 0))
    other = ask(epd, content, [changed]).result(60)
    assert "vision" in other.meta
    assert other.text == reference(content, [changed])


def test_same_image_elsewhere_in_the_prompt_reuses_no_wrong_kv(epd, reference):
    image = picture(20, 56, 84)
    ask(epd, [IMAGE, text("first")], [image]).result(60)
    moved = [text("Some words before the picture"), IMAGE, text("first")]
    assert ask(epd, moved, [image]).result(60).text == reference(moved, [image])


def test_bad_media_fails_alone_and_the_workers_keep_serving(epd, reference):
    truncated = png(picture(4, 56, 56))[:80]
    with pytest.raises(RequestRejected, match="cannot decode image") as info:
        epd.generate(messages=[{"role": "user", "content": [IMAGE, text("x")]}], images=[truncated],
                     temperature=0, max_tokens=4)
    assert info.value.status == 400
    big = io.BytesIO()
    Image.new("1", (20000, 20000)).save(big, format="PNG")
    with pytest.raises(RequestRejected, match="pixels") as info:
        epd.generate(messages=[{"role": "user", "content": [IMAGE, text("x")]}], images=[big.getvalue()],
                     temperature=0, max_tokens=4)
    assert info.value.status == 413
    content, images = [IMAGE, text("still fine?")], [picture(5, 56, 56)]
    assert ask(epd, content, images).result(60).text == reference(content, images)


def test_two_stage_graph_and_split_encoding_across_replicas(reference):
    text_yaml = (ROOT / "examples" / "vl_chat.yaml").read_text().replace(
        "    batching: {max_batch: 16}\n", "    batching: {max_batch: 16}\n    resources: {replicas: 2}\n", 1)
    from omnistage.checkpoints import resolve_model
    from omnistage.graph.compile import compile_text
    with Pipeline(compile_text(text_yaml, resolve_model, base_dir=ROOT / "examples")) as pipe:
        content = [IMAGE, text("one"), IMAGE, text("two"), IMAGE, text("three")]
        images = [picture(30, 56, 56), picture(31, 84, 56), picture(32, 56, 112)]
        result = ask(pipe, content, images).result(60)
        assert result.text == reference(content, images)
        assert result.meta["vision"]["encoded_items"] in (1, 2)  # its images went to both encoders
        # Probed by reference: the LM never holds these files; one as a data URL keys the same.
        files = [png(im) for im in images]
        files[1] = "data:image/png;base64," + base64.b64encode(files[1]).decode()
        again = pipe.generate(messages=[{"role": "user", "content": content}], images=files, temperature=0,
                              max_tokens=12)
        assert "vision" not in again.meta and again.text == result.text
        for bad, match in ((b"not an image", "cannot decode image"), (png(images[0])[:80], "cannot decode image")):
            with pytest.raises(RequestRejected, match=match) as info:
                pipe.generate(messages=[{"role": "user", "content": [IMAGE, text("x")]}], images=[bad],
                              temperature=0, max_tokens=4)
            assert info.value.status == 400


def test_video_and_image_together_equal_hf_generate(reference_video):
    frames = [picture(40 + i, 56, 84) for i in range(5)]  # an odd count: the last frame is repeated
    content = [IMAGE, text("and this clip"), {"type": "video"}, text("what happens?")]
    image = picture(50, 84, 84)
    with Pipeline.from_yaml(ROOT / "examples" / "vl_chat.yaml") as pipe:
        got = pipe.generate(messages=[{"role": "user", "content": content}], images=[png(image)],
                            video=[png(f) for f in frames], temperature=0, max_tokens=12)
    assert got.text == reference_video(content, [image], frames)
    assert got.meta["vision"]["encoded_items"] == 2


def test_qwen2_5_vl_through_encode_and_prefix_cache_equals_hf_generate(vl_reference, tmp_path):
    """The released layout of a Qwen2.5-VL checkpoint behind encode -> ar: a windowed vision
    tower in the encode stage, a second ask about the same picture answered from the prefix cache."""
    graph = tmp_path / "vl.yaml"
    graph.write_text((ROOT / "examples" / "vl_chat.yaml").read_text().replace("tiny:qwen2-vl", "tiny:qwen2.5-vl"))
    content, image = [IMAGE, text("What is in this picture?")], picture(60, 112, 224)
    with Pipeline.from_yaml(graph) as pipe:
        first = pipe.generate(messages=[{"role": "user", "content": content}], images=[png(image)], temperature=0,
                              max_tokens=12)
        again = pipe.generate(messages=[{"role": "user", "content": content}], images=[png(image)], temperature=0,
                              max_tokens=12)
    assert "vision" in first.meta and "vision" not in again.meta
    assert first.text == again.text == vl_reference(content, [image], name="qwen2.5-vl")[1]


@pytest.fixture(scope="module")
def reference_video(vl_reference):
    return lambda content, images, frames, new=12: vl_reference(content, images, frames, new=new)[1]



def test_audio_embeddings_equal_the_whisper_encoder():
    import numpy as np
    import soundfile
    from transformers import AutoFeatureExtractor, WhisperForConditionalGeneration
    path = ensure_tiny("whisper")
    clips = [np.sin(np.linspace(0, 2 * np.pi * f, 8000 * s)).astype(np.float32) for f, s in ((220, 1), (440, 2))]
    wavs = []
    for clip in clips:
        buf = io.BytesIO()
        soundfile.write(buf, clip, 8000, format="WAV")  # resampled to 16 kHz by the stage
        wavs.append(buf.getvalue())
    with Pipeline.from_yaml(ROOT / "examples" / "audio_embed.yaml") as pipe:
        result = pipe.generate(audio=wavs)
        with pytest.raises(RequestRejected, match="no samples"):
            empty = io.BytesIO()
            soundfile.write(empty, np.zeros(0, np.float32), 16000, format="WAV")
            pipe.generate(audio=[empty.getvalue()])
    extractor = AutoFeatureExtractor.from_pretrained(path)
    model = WhisperForConditionalGeneration.from_pretrained(path).eval()
    import soxr
    for wav, got in zip(wavs, result.outputs["embedding"]):
        decoded, rate = soundfile.read(io.BytesIO(wav), dtype="float32")  # 16-bit PCM, as the stage read it
        samples = soxr.resample(decoded, rate, 16000)
        features = extractor(samples, sampling_rate=16000, return_tensors="pt")["input_features"]
        with torch.inference_mode():
            want = model.get_encoder()(features).last_hidden_state[0]
        torch.testing.assert_close(got.embeds, want, rtol=1e-4, atol=1e-4)
