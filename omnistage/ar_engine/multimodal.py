"""Image, video (and, for Qwen2.5-Omni, audio) inputs of Qwen2-VL-family language models inside
the AR engine.

Placeholders: the chat template writes one image token per image; it is expanded to as many
tokens as the vision tower yields for that image (grid t*h*w / merge^2). Those positions take
the image's embeddings and 3-row M-RoPE positions from the model's own ``get_rope_index``.
Embeddings are not computed here: spans carry the preprocessed item as their ``source``.
"""
from __future__ import annotations

from typing import Any

import torch

from omnistage.ar_engine.sequence import MediaSpan


# Families whose image inputs (placeholders, M-RoPE positions, vision tower) are wired and tested,
# and those of them that take video too.
VISION_FAMILIES = frozenset({"qwen2_vl", "qwen2_5_vl", "qwen2_5_omni_thinker"})
VIDEO_FAMILIES = frozenset({"qwen2_vl", "qwen2_5_vl", "qwen2_5_omni_thinker"})


def takes_video(model: Any) -> bool:
    return model.config.model_type in VIDEO_FAMILIES


def is_vision_language(model: Any) -> bool:
    return (model.config.model_type in VISION_FAMILIES and hasattr(getattr(model, "model", None), "get_rope_index")
            and hasattr(model.config, "image_token_id"))


def expand_image_tokens(ids: list[int], image_token_id: int, counts: list[int],
                        what: str = "image") -> tuple[list[int], list[int]]:
    """Repeat the i-th placeholder token counts[i] times; returns the ids and each item's start."""
    out, starts, seen = [], [], 0
    for tok in ids:
        if tok == image_token_id:
            if seen >= len(counts):
                raise ValueError(f"the prompt has more {what} placeholders than the {len(counts)} {what}(s) given")
            starts.append(len(out))
            out.extend([image_token_id] * counts[seen])
            seen += 1
        else:
            out.append(tok)
    if seen != len(counts):
        raise ValueError(f"{len(counts)} {what}(s) given but the prompt has {seen} placeholder(s)")
    return out, starts


def media_spans(model: Any, ids: list[int], images: list[Any], videos: list[Any] = (), audio: list[Any] = (),
                video_audio: Any = None) -> tuple[list[int], tuple[MediaSpan, ...], torch.Tensor, int]:
    """Expand placeholders for preprocessed images and videos (``.tokens``, ``.hash``,
    ``.grid_thw``) and, for a model that hears, audio clips (``.tokens``, ``.hash``,
    ``.features``), in the prompt's order, and compute M-RoPE positions. ``video_audio``: the
    video's own sound track (one video), interleaved with its frames (Qwen2.5-Omni's
    ``use_audio_in_video``). Returns (ids, spans, positions [3, len], delta)."""
    cfg = model.config
    queues = {cfg.image_token_id: list(images), cfg.video_token_id: list(videos)}
    names = {cfg.image_token_id: "image", cfg.video_token_id: "video"}
    if getattr(cfg, "audio_token_id", None) is not None:
        queues[cfg.audio_token_id], names[cfg.audio_token_id] = list(audio), "audio clip"
    given = {tok: len(items) for tok, items in queues.items()}
    out: list[int] = []
    spans: list[MediaSpan] = []
    heard: list[Any] = []  # audio in the order the prompt has it (the video's sound track included)
    for tok in ids:
        if tok not in queues:
            out.append(tok)
            continue
        if not queues[tok]:
            raise ValueError(f"the prompt has more {names[tok]} placeholders than the {given[tok]} {names[tok]}(s) given")
        item = queues[tok].pop(0)
        if tok == cfg.video_token_id and video_audio is not None:
            heard.append(video_audio)
            _interleave(cfg, item, video_audio, out, spans)
            continue
        if tok == getattr(cfg, "audio_token_id", None):
            heard.append(item)
        spans.append(MediaSpan(len(out), item.tokens, item.hash, grid_thw=getattr(item, "grid_thw", None), source=item))
        out.extend([tok] * item.tokens)
    for tok, left in queues.items():
        if left:
            raise ValueError(f"{len(left)} {names[tok]}(s) given without a placeholder in the prompt")
    seconds = torch.tensor([v.seconds_per_grid for v in videos]) if videos else None
    frames = torch.tensor([a.features.shape[1] for a in heard], dtype=torch.long) if heard else None
    positions, delta = mrope_positions(model, out, _grids(images), _grids(videos), audio_frames=frames,
                                       video_seconds=seconds, audio_in_video=video_audio is not None)
    return out, tuple(spans), positions, delta


# Qwen2.5-Omni's time axis: 25 temporal positions per second (one per 40-ms audio token); a video
# and its sound track interleave in 2-second chunks.
POSITIONS_PER_SECOND = 25
SECONDS_PER_CHUNK = 2.0


def _interleave(cfg: Any, video: Any, sound: Any, out: list[int], spans: list[MediaSpan]) -> None:
    """A video with its sound track, laid out as the reference processor does: audio-start, then
    per 2-s chunk the video's tokens of that chunk and the audio's, then audio-end."""
    per_patch = video.tokens // video.grid_thw[0]  # tokens per temporal patch
    video_times = [k // per_patch * video.seconds_per_grid * POSITIONS_PER_SECOND for k in range(video.tokens)]
    per_chunk = int(POSITIONS_PER_SECOND * SECONDS_PER_CHUNK)
    pieces = (_chunks(video_times, per_chunk), _chunks(list(range(sound.tokens)), per_chunk))
    out.append(cfg.audio_start_token_id)
    for j in range(max(map(len, pieces))):
        for item, token, chunks in ((video, cfg.video_token_id, pieces[0]), (sound, cfg.audio_token_id, pieces[1])):
            if j < len(chunks) and chunks[j][1] > chunks[j][0]:
                first, end = chunks[j]
                spans.append(MediaSpan(len(out), end - first, item.hash, grid_thw=getattr(item, "grid_thw", None),
                                       source=item, offset=first))
                out.extend([token] * (end - first))
    out.append(cfg.audio_end_token_id)


def _chunks(times: list[float], per_chunk: int) -> list[tuple[int, int]]:
    """[start, end) index ranges of successive ``per_chunk`` spans of time (the reference
    processor's ``get_chunked_index``: one boundary per element at most)."""
    out, start, chunk = [], 0, 1
    for i, value in enumerate(times):
        if value >= chunk * per_chunk:
            out.append((start, i))
            start, chunk = i, chunk + 1
    out.append((start, len(times)))
    return out


def _grids(items: list[Any]) -> torch.Tensor | None:
    return torch.tensor([it.grid_thw for it in items], dtype=torch.long) if items else None


def mrope_positions(model: Any, ids: list[int], image_grids: torch.Tensor | None,
                    video_grids: torch.Tensor | None = None,
                    audio_frames: torch.Tensor | None = None,
                    video_seconds: torch.Tensor | None = None,
                    audio_in_video: bool = False) -> tuple[torch.Tensor, int]:
    """M-RoPE positions [3, len] of a prompt and the offset of text after it; ``audio_frames``:
    each audio clip's feature frames, ``video_seconds``: the seconds each video's temporal patch
    spans (Qwen2.5-VL and Qwen2.5-Omni, whose temporal positions count time)."""
    input_ids = torch.tensor([ids])
    mask = torch.ones_like(input_ids)
    if model.config.model_type == "qwen2_5_omni_thinker":  # no token types; audio lengths instead
        positions, delta = model.model.get_rope_index(input_ids, image_grid_thw=image_grids,
                                                      video_grid_thw=video_grids, attention_mask=mask,
                                                      audio_seqlens=audio_frames, second_per_grids=video_seconds,
                                                      use_audio_in_video=audio_in_video)
    else:
        token_types = (input_ids == model.config.image_token_id).int() + 2 * (input_ids == model.config.video_token_id).int()
        timed = {"second_per_grid_ts": video_seconds} if model.config.model_type == "qwen2_5_vl" else {}
        positions, delta = model.model.get_rope_index(input_ids, token_types, image_grid_thw=image_grids,
                                                      video_grid_thw=video_grids, attention_mask=mask, **timed)
    return positions[:, 0].cpu(), int(delta.reshape(-1)[0])
