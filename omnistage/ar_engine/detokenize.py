"""Incremental detokenization for streaming.

Decoding a token alone is wrong for tokenizers whose pieces depend on their neighbours (a
leading space in SentencePiece, a UTF-8 character split over byte-level tokens). So each step
decodes a short window of previous tokens with and without the new ones and emits only the
difference, and holds text back while it ends in an incomplete character.

With a Rust ("fast") tokenizer the window lives in ``tokenizers.decoders.DecodeStream``, which
does the same in one native call per token; other tokenizers (and those that clean up spaces
after decoding, which the stream does not do) take the two-decode path in Python.
"""
from __future__ import annotations

from typing import Any

from tokenizers.decoders import DecodeStream

CONTEXT_TOKENS = 5


class IncrementalDetokenizer:
    def __init__(self, tokenizer: Any, prompt: list[int]) -> None:
        self._tok = tokenizer
        self._ids = list(prompt[-CONTEXT_TOKENS:])
        self._prefix = 0
        self._read = len(self._ids)
        self._backend = _stream_backend(tokenizer)
        self._stream = None
        # (a context ending inside a character makes the stream emit part of the context: such a
        # prompt, rare outside random token ids, takes the Python path)
        if self._backend is not None and "\ufffd" not in tokenizer.decode(self._ids, skip_special_tokens=True):
            self._stream = DecodeStream(ids=list(self._ids), skip_special_tokens=True)

    def push(self, token: int) -> str:
        self._ids.append(token)
        if self._stream is not None:
            text = self._stream.step(self._backend, token)
            if text:
                self._prefix, self._read = self._read, len(self._ids)
            return text or ""
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
        self._stream = None  # (nothing is pushed after a flush)
        return after[len(before):] if len(after) > len(before) else ""


def _stream_backend(tokenizer: Any) -> Any:
    """The Rust tokenizer a ``DecodeStream`` can step with, or None."""
    if not getattr(tokenizer, "is_fast", False) or getattr(tokenizer, "clean_up_tokenization_spaces", False):
        return None
    return tokenizer.backend_tokenizer
