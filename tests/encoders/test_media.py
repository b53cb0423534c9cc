import base64
import hashlib
import io

import numpy as np
import pytest
import soundfile
import torch
from PIL import Image

from omnistage.encoders.media import MediaError, MediaLimits, load_audio, load_image, load_video, open_image


def encoded(fmt="PNG", size=(40, 30), color=(200, 10, 10)):
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format=fmt)
    return buf.getvalue()


def data_url(data, mime):
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF"])
def test_images_decode_from_bytes_and_data_urls(fmt):
    raw = encoded(fmt)
    for src in (raw, data_url(raw, f"image/{fmt.lower()}")):
        image = load_image(src)
        assert image.size == (40, 30) and image.mode == "RGB"


def test_gif_gives_its_first_frame():
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 255, 0))]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    assert load_image(buf.getvalue()).getpixel((0, 0))[0] > 200


@pytest.mark.parametrize("src,words,status", [
    (encoded()[:60], "cannot decode image", 400),
    (data_url(encoded(), "audio/wav"), "expected an image", 400),
    (data_url(encoded("PNG"), "image/jpeg"), "says image/jpeg but the data is image/png", 400),
    ("data:image/png;base64,@@@", "not valid base64", 400),
    (b"", "image is empty", 400),
    ("/etc/passwd", "local image paths are not allowed", 400),
    ("https://example.com/cat.png", "remote image URLs are not fetched", 400),
])
def test_bad_images_are_clear_errors(src, words, status):
    with pytest.raises(MediaError, match=words) as info:
        load_image(src)
    assert info.value.status == status and info.value.param == "images"


def test_an_opened_image_is_decoded_only_when_asked():
    big = encoded(size=(300, 200), color=(1, 2, 3))
    cut = big[:len(big) // 2]  # the header is whole, the pixel data is not
    opened = open_image(cut)
    assert opened.size == (300, 200)  # known from the header alone
    with pytest.raises(MediaError, match="cannot decode image") as info:
        opened.decode()
    assert info.value.status == 400 and info.value.param == "images"
    assert open_image(big).decode().getpixel((5, 5)) == (1, 2, 3)


def test_an_image_file_is_fingerprinted_by_its_bytes():
    def digest(src):
        h = hashlib.blake2b()
        open_image(src).fingerprint(h)
        return h.hexdigest()

    png = encoded()
    assert digest(png) == digest(data_url(png, "image/png"))  # the same file, however it travels
    opened, h = open_image(png), hashlib.blake2b()
    opened.decode()
    opened.fingerprint(h)
    assert opened.data is None and h.hexdigest() == digest(png)  # the file is let go once decoded
    assert digest(png) != digest(encoded(color=(200, 10, 11)))
    pixels = Image.new("RGB", (40, 30), (200, 10, 10))
    assert digest(pixels) == digest(pixels.copy()) != digest(Image.new("RGB", (40, 30), (200, 10, 11)))


def test_pixel_and_byte_limits_are_checked_before_decoding():
    huge = io.BytesIO()
    Image.new("1", (20000, 20000)).save(huge, format="PNG")  # a few KB that would decode to 400 MP
    with pytest.raises(MediaError, match="pixels") as info:
        load_image(huge.getvalue())
    assert info.value.status == 413
    with pytest.raises(MediaError, match="larger than 100 bytes") as info:
        load_image(encoded(), MediaLimits(max_bytes=100))
    assert info.value.status == 413


def test_local_paths_only_under_the_allowed_directory(tmp_path):
    (tmp_path / "cat.png").write_bytes(encoded())
    assert load_image(str(tmp_path / "cat.png"), MediaLimits(allowed_dir=str(tmp_path))).size == (40, 30)
    with pytest.raises(MediaError, match="must be under"):
        load_image(str(tmp_path / ".." / "x.png"), MediaLimits(allowed_dir=str(tmp_path)))


def wav(samples, rate, fmt="WAV"):
    buf = io.BytesIO()
    soundfile.write(buf, samples, rate, format=fmt)
    return buf.getvalue()


def test_audio_decodes_resamples_and_mixes_down():
    tone = np.sin(np.linspace(0, 2 * np.pi * 440, 8000)).astype(np.float32)
    out = load_audio(wav(np.stack([tone, tone], 1), 8000, "FLAC"), 16000)
    assert out.dtype == np.float32 and out.shape == (16000,)
    assert load_audio({"array": tone, "sampling_rate": 16000}, 16000).shape == (8000,)


@pytest.mark.parametrize("src,words", [
    (wav(np.zeros(0, np.float32), 16000), "no samples"),
    (b"RIFF....WAVEjunk", "cannot decode audio"),
    (data_url(encoded(), "image/png"), "expected audio"),
])
def test_bad_audio_is_a_clear_error(src, words):
    with pytest.raises(MediaError, match=words):
        load_audio(src, 16000)


def test_audio_duration_limit():
    with pytest.raises(MediaError, match="at most 1 s") as info:
        load_audio(wav(np.zeros(32000, np.float32), 16000), 16000, MediaLimits(max_audio_seconds=1))
    assert info.value.status == 413


def mp4(frames, fps):
    import av
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        stream = out.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f.numpy(), format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buf.getvalue()


def shade(image):
    return int(np.asarray(image).mean())


def test_video_from_frames_and_from_an_mp4():
    frames = [torch.full((32, 48, 3), i * 20, dtype=torch.uint8) for i in range(10)]
    given = load_video(frames)
    assert len(given.frames) == 10 and given.fps == 2.0  # a list is taken as sampled at 2 per second
    thinned = load_video(frames, max_frames=4)
    assert [shade(f) for f in thinned.frames] == pytest.approx([0, 40, 100, 140], abs=3) and thinned.fps == 0.8
    decoded = load_video(mp4(frames, fps=2))
    assert len(decoded.frames) == 10 and decoded.frames[0].size == (48, 32) and decoded.fps == 2.0
    with pytest.raises(MediaError, match="cannot decode video"):
        load_video(b"not a video at all")
    with pytest.raises(MediaError, match="at most 2") as info:
        load_video(frames, MediaLimits(max_frames=2))
    assert info.value.status == 413


def test_a_video_file_is_sampled_at_two_frames_per_second_by_its_own_rate():
    # 3 s at 10 frames per second: the frames at 0, 0.5, 1.0, ... 2.5 s
    frames = [torch.full((32, 48, 3), i * 8, dtype=torch.uint8) for i in range(30)]
    clip = load_video(mp4(frames, fps=10))
    assert clip.fps == 2.0 and [shade(f) for f in clip.frames] == pytest.approx([0, 40, 80, 120, 160, 200], abs=3)
    # A slower video keeps every frame, at its own rate; a cap thins them and lowers the rate.
    slow = load_video(mp4(frames[:6], fps=1))
    assert len(slow.frames) == 6 and slow.fps == 1.0
    capped = load_video(mp4(frames, fps=10), max_frames=3)
    assert len(capped.frames) == 3 and capped.fps == 1.0


def test_a_video_files_sound_track():
    from PIL import Image

    from omnistage.encoders.media import load_video_audio
    from tests.conftest import mp4_with_sound
    frames = [Image.new("RGB", (48, 32), (20 * i, 0, 0)) for i in range(4)]
    sound = load_video_audio(mp4_with_sound(frames, seconds=2.0, rate=22050), 16000)
    assert sound.dtype == np.float32 and 2.0 <= len(sound) / 16000 < 2.2 and 0.2 < np.abs(sound).max() < 1.0
    assert load_video_audio(mp4([torch.zeros(32, 48, 3, dtype=torch.uint8)] * 4, fps=2), 16000) is None  # silent
    assert load_video_audio(frames, 16000) is None  # frames have no sound
    with pytest.raises(MediaError, match="at most 1 s") as info:
        load_video_audio(mp4_with_sound(frames, seconds=2.0), 16000, MediaLimits(max_audio_seconds=1))
    assert info.value.status == 413
