"""Qwen2.5-Omni's audio and vision towers as their own encode stages feeding the thinker."""
import io

import numpy as np
import soundfile as sf
from PIL import Image

from omnistage.pipeline import Pipeline

GRAPH = """
name: omni-encode
models:
  thinker: {path: "tiny:qwen2.5-omni/thinker"}
stages:
  ears: {kind: encode, model: thinker, inputs: {audio: request.audio}}
  eyes: {kind: encode, model: thinker, inputs: {images: request.images, video: request.video}}
  thinker:
    kind: ar
    model: thinker
    inputs: {messages: request.messages, audio: request.audio, images: request.images, video: request.video,
             audio_embeds: ears.embeddings, image_embeds: eyes.embeddings}
    outputs: {text: response.text}
"""


def _wav():
    t = np.arange(int(16000 * 1.1)) / 16000
    buf = io.BytesIO()
    sf.write(buf, (0.3 * np.sin(2 * np.pi * 523 * t)).astype(np.float32), 16000, format="WAV")
    return buf.getvalue()


def test_encode_stages_feed_the_thinker_and_text_equals_the_reference(tmp_path, omni_reference):
    run, tok = omni_reference
    path = tmp_path / "graph.yaml"
    path.write_text(GRAPH)
    clip, image = _wav(), Image.new("RGB", (70, 90), (20, 160, 40))
    heard = [{"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": "What is it?"}]}]
    seen = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]}]
    frames = [Image.new("RGB", (56, 56), (30 * i, 90, 200 - 40 * i)) for i in range(4)]
    watched = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What is it?"}]}]
    both = [{"role": "user", "content": [{"type": "image"}, {"type": "audio"}, {"type": "text", "text": "Same?"}]}]
    with Pipeline.from_yaml(path) as pipe:
        by_ear = pipe.submit(messages=heard, audio=[clip], max_tokens=8, temperature=0).result(120)
        by_eye = pipe.submit(messages=seen, images=[image], max_tokens=8, temperature=0).result(120)
        by_clip = pipe.submit(messages=watched, video=frames, max_tokens=8, temperature=0).result(120)
        # (another picture: the thinker's media cache would answer for the one it has seen)
        other = Image.new("RGB", (70, 90), (120, 30, 190))
        by_both = pipe.submit(messages=both, images=[other], audio=[clip], max_tokens=8, temperature=0).result(120)
    assert by_ear.meta["ears"]["encoded_items"] == 1 and by_eye.meta["eyes"]["encoded_items"] == 1
    assert by_clip.meta["eyes"]["encoded_items"] == 1
    samples, _ = sf.read(io.BytesIO(clip), dtype="float32")
    ref_heard, _, _ = run(heard, 8, 2, seed=0, clips=[samples])
    ref_seen, _, _ = run(seen, 8, 2, seed=0, images=[image])
    assert by_ear.text == tok.decode(ref_heard, skip_special_tokens=True)
    assert by_eye.text == tok.decode(ref_seen, skip_special_tokens=True)
    ref_watched, _, _ = run(watched, 8, 2, seed=0, frames=frames)
    assert by_clip.text == tok.decode(ref_watched, skip_special_tokens=True)
    # An image and a clip in one request: each tower's stage encodes its own item.
    assert by_both.meta["ears"]["encoded_items"] == 1 and by_both.meta["eyes"]["encoded_items"] == 1
    ref_both, _, _ = run(both, 8, 2, seed=0, clips=[samples], images=[other])
    assert by_both.text == tok.decode(ref_both, skip_special_tokens=True)


def test_a_cached_clip_before_an_image_does_not_pass_for_the_image(tmp_path, omni_reference):
    """The thinker's prefix cache covers the clip of an earlier request; the image after it is
    still new, so the vision encode stage must encode it (the probe counts images only)."""
    run, tok = omni_reference
    path = tmp_path / "graph.yaml"
    path.write_text(GRAPH)
    clip, image = _wav(), Image.new("RGB", (70, 90), (200, 60, 40))
    # The same clip and words first (so that whole cache blocks cover the clip), then the image.
    words = {"type": "text", "text": "Listen to this sound very carefully, then look at the picture that follows it."}
    heard = [{"role": "user", "content": [{"type": "audio"}, words]}]
    both = [{"role": "user", "content": [{"type": "audio"}, words, {"type": "image"},
                                         {"type": "text", "text": "Same?"}]}]
    with Pipeline.from_yaml(path) as pipe:
        pipe.submit(messages=heard, audio=[clip], max_tokens=2, temperature=0).result(120)
        mixed = pipe.submit(messages=both, audio=[clip], images=[image], max_tokens=8, temperature=0).result(120)
    assert mixed.meta["eyes"]["encoded_items"] == 1 and mixed.meta["thinker"]["cached_tokens"] > 0
    samples, _ = sf.read(io.BytesIO(clip), dtype="float32")
    ref, _, _ = run(both, 8, 2, seed=0, clips=[samples], images=[image])
    assert mixed.text == tok.decode(ref, skip_special_tokens=True)
