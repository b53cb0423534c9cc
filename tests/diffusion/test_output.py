import io

import av
import numpy as np
import pytest
from PIL import Image

from omnistage.diffusion.output import encode_image, encode_video, to_uint8

RNG = np.random.default_rng(0)


def test_png_is_lossless_over_the_rounded_pixels():
    pixels = RNG.random((24, 40, 3), dtype=np.float32)
    out = encode_image(pixels, "png")
    assert (out["format"], out["width"], out["height"]) == ("png", 40, 24)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(out["data"]))), to_uint8(pixels))


@pytest.mark.parametrize("fmt, magic", [("jpeg", b"\xff\xd8"), ("webp", b"RIFF")])
def test_lossy_image_formats(fmt, magic):
    out = encode_image(RNG.random((16, 16, 3), dtype=np.float32), fmt)
    assert out["data"].startswith(magic) and Image.open(io.BytesIO(out["data"])).size == (16, 16)


def test_raw_keeps_the_floats():
    pixels = RNG.random((8, 8, 3), dtype=np.float32)
    assert np.array_equal(encode_image(pixels, "raw")["data"].numpy(), pixels)


def test_mp4_is_h264_with_every_frame_even_for_odd_sizes():
    frames = RNG.random((9, 17, 30, 3), dtype=np.float32)
    out = encode_video(frames, "mp4", fps=8)
    assert (out["frames"], out["fps"], out["width"], out["height"]) == (9, 8, 30, 17)
    with av.open(io.BytesIO(out["data"])) as container:
        stream = container.streams.video[0]
        decoded = list(container.decode(video=0))
        assert stream.codec_context.name == "h264" and len(decoded) == 9
        assert (decoded[0].width, decoded[0].height) == (30, 18)


@pytest.mark.parametrize("fmt", ["gif", "webp"])
def test_animated_fallbacks_hold_every_frame(fmt):
    frames = RNG.random((5, 16, 16, 3), dtype=np.float32)
    image = Image.open(io.BytesIO(encode_video(frames, fmt, fps=10)["data"]))
    assert image.n_frames == 5
