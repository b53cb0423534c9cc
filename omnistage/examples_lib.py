"""Small user functions the example graphs call from ``python`` stages."""
from __future__ import annotations


def shout(text: str) -> str:
    """Upper-case the text and end it with an exclamation mark."""
    return text.upper().rstrip(".!? ") + "!"
