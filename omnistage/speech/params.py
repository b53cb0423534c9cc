"""Submit-time checks of the speech kinds (pure Python, no torch: run by the orchestrator)."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from omnistage.errors import RequestRejected


def check_speech(options: Any, info: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
    """``voice`` must be one the stage loaded, ``speed`` within 0.25-4.0; fills in the voice."""
    voice = params.get("voice") or options.default_voice
    voices = info.get("voices")
    if voices is not None and voice not in voices:
        raise RequestRejected(f"unknown voice {voice!r}; available: {', '.join(voices)}", param="voice")
    speed = params.get("speed", 1.0)
    speed = 1.0 if speed is None else speed
    if not isinstance(speed, (int, float)) or isinstance(speed, bool) or not 0.25 <= speed <= 4.0:
        raise RequestRejected(f"speed must be a number between 0.25 and 4.0, got {speed!r}", param="speed")
    return {"voice": voice, "speed": float(speed)}
