"""Incremental detokenization for streaming.

Decoding a token alone is wrong for tokenizers whose pieces depend on their neighbours (a
leading space in SentencePiece, a UTF-8 character split over byte-level tokens). So each step
decodes a short window of previous tokens with and without the new ones and emits only the
difference, and holds text back while it ends in an incomplete character.
"""
from __future__ import annotations

from typing import Any

CONTEXT_TOKENS = 5


class IncrementalDetokenizer:
    def __init__(self, tokenizer: Any, prompt: list[int]) -> None:
        self._tok = tokenizer
        self._ids = list(prompt[-CONTEXT_TOKENS:])
        self._prefix = 0
        self._read = len(self._ids)

    def push(self, token: int) -> str:
        self._ids.append(token)
        before = self._tok.decode(self._ids[self._prefix:self._read], skip_special_tokens=True)
        after = self._tok.decode(self._ids[self._prefix:], skip_special_tokens=True)
        if len(after) <= len(before) or after.endswith("\ufffd"):
            return ""
        self._prefix, self._read = self._read, len(self._ids)
        return after[len(before):]

    def flush(self) -> str:
        """Whatever is still held back (an incomplete character at the very end)."""
        before = self._tok.decode(self._ids[self._prefix:self._read], skip_special_tokens=True)
        after = self._tok.decode(self._ids[self._prefix:], skip_special_tokens=True)
        self._prefix = self._read = len(self._ids)
        return after[len(before):] if len(after) > len(before) else ""
