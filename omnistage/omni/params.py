"""Submit-time check of the omni speech kinds (pure Python, no torch: run by the orchestrator)."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from omnistage.errors import RequestRejected


def check_voice(options: Any, info: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
    """``voice`` must be a speaker the stage loaded (fills in the default)."""
    voice = params.get("voice") or options.default_voice
    voices = info.get("voices")
    if voices is not None and voice not in voices:
        raise RequestRejected(f"unknown voice {voice!r}; this model speaks as: {', '.join(voices)}", param="voice")
    return {"voice": voice}
