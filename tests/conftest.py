import io
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def tiny_default_graph() -> Path:
    """The default graph without its real-weight text chat (SmolLM2): the same stages on tiny
    models only, for the tests that drive every stage of it (text chat goes to its Qwen2-VL)."""
    import tempfile

    import yaml

    from omnistage.cli import DEFAULT_GRAPH
    graph = yaml.safe_load(DEFAULT_GRAPH.read_text())
    del graph["models"]["lm"], graph["stages"]["assistant"]
    out = Path(tempfile.gettempdir()) / f"omnistage-tests-{os.getpid()}" / "default_tiny.yaml"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(graph, sort_keys=False))
    return out


@pytest.fixture(scope="session")
def qwen2_dir() -> Path:
    from omnistage.models.tiny import ensure_tiny
    return ensure_tiny("qwen2")


@pytest.fixture(scope="session")
def hf_greedy(qwen2_dir):
    """Reference: HF generate (greedy) on the same tiny checkpoint, one request at a time."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(qwen2_dir)
    model = AutoModelForCausalLM.from_pretrained(qwen2_dir).eval()

    def run(messages=None, prompt=None, max_tokens=16):
        if messages is not None:
            enc = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        else:
            enc = tok(prompt, return_tensors="pt")
        with torch.inference_mode():
            out = model.generate(**enc, max_new_tokens=max_tokens, do_sample=False)
        new = out[0, enc["input_ids"].shape[1]:].tolist()
        return new, tok.decode(new, skip_special_tokens=True)
    return run


@pytest.fixture(scope="session")
def vl_reference():
    """Reference: HF generate (greedy) on a tiny vision-language model (``name``: qwen2-vl or
    qwen2.5-vl) with images and/or a video, one request at a time. Returns (new token ids, text)."""
    import torch
    from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoTokenizer

    from omnistage.ar_engine.multimodal import expand_image_tokens
    from omnistage.encoders.video import prepare_video
    from omnistage.models.tiny import ensure_tiny
    loaded = {}

    def load(name):
        if name not in loaded:
            path = ensure_tiny(name)
            loaded[name] = (AutoTokenizer.from_pretrained(path), AutoImageProcessor.from_pretrained(path),
                            AutoModelForImageTextToText.from_pretrained(path).eval())
        return loaded[name]

    def run(content, images=(), frames=None, new=12, name="qwen2-vl", fps=2.0):
        tok, processor, model = load(name)
        cfg = model.config
        prompt = tok.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                         tokenize=False)
        ids, extra = tok(prompt, add_special_tokens=False)["input_ids"], {}
        if images:
            pixels = processor(images=list(images), return_tensors="pt")
            ids, _ = expand_image_tokens(ids, cfg.image_token_id, (pixels["image_grid_thw"].prod(-1) // 4).tolist())
            extra.update(pixel_values=pixels["pixel_values"], image_grid_thw=pixels["image_grid_thw"])
        if frames is not None:
            video = prepare_video(processor, frames, fps)
            ids, _ = expand_image_tokens(ids, cfg.video_token_id, [video.tokens], "video")
            extra.update(pixel_values_videos=video.pixel_values, video_grid_thw=torch.tensor([video.grid_thw]))
            if cfg.model_type == "qwen2_5_vl":  # its temporal positions count seconds
                extra.update(second_per_grid_ts=torch.tensor([video.seconds_per_grid]))
        input_ids = torch.tensor([ids])
        types = (input_ids == cfg.image_token_id).int() + 2 * (input_ids == cfg.video_token_id).int()
        with torch.inference_mode():
            out = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=new,
                                 do_sample=False, mm_token_type_ids=types, **extra)
        new_ids = out[0, len(ids):].tolist()
        return new_ids, tok.decode(new_ids, skip_special_tokens=True)
    return run


@pytest.fixture(scope="session")
def diffusers_reference():
    """Reference: the diffusers pipeline of a tiny checkpoint called one request at a time, as a
    user would without omnistage. Returns float pixels: (H, W, 3), or (F, H, W, 3) for video."""
    import torch
    from diffusers import DiffusionPipeline

    from omnistage.models.tiny import ensure_tiny
    pipes = {}

    def run(name, prompt, seed, scheduler=None, **kwargs):
        """``scheduler``: a diffusers scheduler class to swap in for this call."""
        if name not in pipes:
            pipes[name] = DiffusionPipeline.from_pretrained(ensure_tiny(name))
            pipes[name].set_progress_bar_config(disable=True)
        pipe = pipes[name]
        own = pipe.scheduler
        if scheduler is not None:
            pipe.scheduler = scheduler.from_config(own.config)
        try:
            out = pipe(prompt, generator=torch.Generator().manual_seed(seed), output_type="np", **kwargs)
        finally:
            pipe.scheduler = own
        return out.frames[0] if hasattr(out, "frames") else out.images[0]
    return run


@pytest.fixture(scope="session")
def omni_reference():
    """Reference: Qwen2_5OmniForConditionalGeneration.generate on the tiny checkpoint, greedy
    thinker and talker, one request at a time. Returns (text ids, codec tokens, waveform); the
    token2wav noise is fixed by seeding torch's global generator with ``seed``. Audio clips (16 kHz
    float arrays) go in as the reference processor prepares them."""
    import torch
    from transformers import (AutoImageProcessor, AutoTokenizer, Qwen2_5OmniForConditionalGeneration,
                              WhisperFeatureExtractor)

    from omnistage.encoders.video import prepare_video
    from omnistage.models.tiny import ensure_tiny
    root = ensure_tiny("qwen2.5-omni")
    model = Qwen2_5OmniForConditionalGeneration.from_pretrained(root).eval()
    tok = AutoTokenizer.from_pretrained(root / "thinker")
    extractor = WhisperFeatureExtractor.from_pretrained(root / "audio")
    images_processor = AutoImageProcessor.from_pretrained(root)
    codes: list[torch.Tensor] = []
    talker_generate = model.talker.generate

    def capture(**kwargs):
        out = talker_generate(**kwargs)
        codes.append(out[0, kwargs["input_ids"].shape[1]:])
        return out
    model.talker.generate = capture

    def encode(messages, clips, images, frames=None, fps=2.0, sound=None):
        text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        extra = {}
        if frames is not None:  # patchified as omnistage does (the reference video processor needs torchvision)
            video = prepare_video(images_processor, list(frames), fps)
            if sound is None:
                text = text.replace("<|video_pad|>", "<|video_pad|>" * video.tokens)
            else:  # the video's sound track interleaved with its frames, laid out by the reference processor
                feats = extractor([sound], sampling_rate=16000, padding="max_length", return_attention_mask=True,
                                  return_tensors="pt")
                n = int(feats.attention_mask.sum())
                layout = _sound_and_frames(video.grid_thw, ((n - 1) // 2 + 1 - 2) // 2 + 1,
                                           images_processor.temporal_patch_size / fps)
                text = text.replace("<|video_pad|>", layout)
                extra.update(input_features=feats.input_features, feature_attention_mask=feats.attention_mask,
                             use_audio_in_video=True)
            extra.update(thinker_pixel_values_videos=video.pixel_values,
                         thinker_video_grid_thw=torch.tensor([video.grid_thw]),
                         # as the reference processor computes it from the sampling rate
                         thinker_video_second_per_grid=torch.tensor([images_processor.temporal_patch_size / fps]))
        if images:
            pixels = images_processor(images=list(images), return_tensors="pt")
            tokens = int(pixels.image_grid_thw[0].prod()) // 4  # one image: its patches after the 2x2 merge
            text = text.replace("<|image_pad|>", "<|image_pad|>" * tokens)
            # Prefixed: the reference's generate would also hand unprefixed pixel values to the talker,
            # whose generate refuses them (transformers 5.23).
            extra.update(thinker_pixel_values=pixels.pixel_values, thinker_image_grid_thw=pixels.image_grid_thw)
        if clips:
            feats = extractor(list(clips), sampling_rate=16000, padding="max_length", return_attention_mask=True,
                              return_tensors="pt")
            for n in feats.attention_mask.sum(-1).tolist():  # one placeholder per clip, expanded
                tokens = ((n - 1) // 2 + 1 - 2) // 2 + 1
                text = text.replace("<|AUDIO|>", "<|AUDIO_EXPANDED|>" * tokens, 1)
            text = text.replace("<|AUDIO_EXPANDED|>", "<|AUDIO|>")
            extra.update(input_features=feats.input_features, feature_attention_mask=feats.attention_mask)
        return {**tok(text, return_tensors="pt", add_special_tokens=False), **extra}

    def run(messages, text_tokens, codec_tokens, seed, clips=(), images=(), frames=None, fps=2.0, sound=None):
        enc = encode(messages, clips, images, frames, fps, sound)
        torch.manual_seed(seed)
        with torch.inference_mode():
            seq, wav = model.generate(**enc, thinker_max_new_tokens=text_tokens, thinker_do_sample=False,
                                      talker_do_sample=False, talker_max_new_tokens=codec_tokens,
                                      talker_eos_token_id=[60, 62])
        made = codes.pop().tolist()
        made = made[:next((i for i, c in enumerate(made) if c in (60, 62)), len(made))]
        return seq[0, enc["input_ids"].shape[1]:].tolist(), made, wav
    return run, tok


def _sound_and_frames(grid, audio_tokens, seconds_per_grid):
    """The reference processor's placeholder for a video with its sound track
    (``Qwen2_5OmniProcessor.replace_video_with_audio_token``, called on the tiny tokenizer's
    tokens: the processor itself cannot be built without torchvision)."""
    import types

    import torch
    from transformers import Qwen2_5OmniProcessor
    proc = types.SimpleNamespace(audio_bos_token="<|audio_bos|>", audio_eos_token="<|audio_eos|>",
                                 video_token="<|video_pad|>", audio_token="<|AUDIO|>",
                                 video_processor=types.SimpleNamespace(merge_size=2))
    proc.get_chunked_index = types.MethodType(Qwen2_5OmniProcessor.get_chunked_index, proc)
    return Qwen2_5OmniProcessor.replace_video_with_audio_token(
        proc, {"video_grid_thw": torch.tensor([grid]), "video_second_per_grid": [seconds_per_grid]}, 0,
        {"num_audio_tokens": torch.tensor([audio_tokens])}, 0, position_id_per_seconds=25, seconds_per_chunk=2.0)


def mp4_with_sound(frames, seconds, fps=2, rate=16000):
    """An MP4 of ``frames`` (PIL images) at ``fps`` with ``seconds`` of a rising 440 Hz tone (AAC)."""
    import av
    import numpy as np
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        video = out.add_stream("mpeg4", rate=fps)
        video.width, video.height, video.pix_fmt = frames[0].width, frames[0].height, "yuv420p"
        sound = out.add_stream("aac", rate=rate)
        sound.layout = "mono"
        for frame in frames:
            for packet in video.encode(av.VideoFrame.from_image(frame)):
                out.mux(packet)
        for packet in video.encode():
            out.mux(packet)
        t = np.arange(int(rate * seconds)) / rate
        wave = (0.3 * np.sin(2 * np.pi * 440 * t) * (1 + t)).astype(np.float32)
        for k in range(0, len(wave), 1024):
            block = av.AudioFrame.from_ndarray(wave[None, k:k + 1024], format="fltp", layout="mono")
            block.sample_rate = rate
            for packet in sound.encode(block):
                out.mux(packet)
        for packet in sound.encode():
            out.mux(packet)
    return buf.getvalue()
