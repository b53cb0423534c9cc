"""Submit-time checks of the speech kinds (pure Python, no torch: run by the orchestrator)."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from omnistage.errors import RequestRejected


def check_speech(options: Any, info: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
    """``voice`` must be one the stage loaded; fills in the voice and the speed. (Types and the
    speed's range are checked by the ``tts`` kind's declared parameters, graph.params.SPEECH.)"""
    voice = params.get("voice") or options.default_voice
    voices = info.get("voices")
    if voices is not None and voice not in voices:
        raise RequestRejected(f"unknown voice {voice!r}; available: {', '.join(voices)}", param="voice")
    speed = params.get("speed")
    return {"voice": voice, "speed": 1.0 if speed is None else float(speed)}
