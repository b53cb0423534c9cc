"""Structured output: a grammar that constrains which tokens a request may sample (xgrammar).

A request asks for one with OpenAI's ``response_format`` (``json_object``, ``json_schema``,
``structural_tag``) or with vLLM's ``structured_outputs`` extension (``json``, ``regex``,
``choice``, ``grammar`` in EBNF, ``json_object``, ``structural_tag``); either becomes a
``GuideSpec``, plain strings that travel with the request's parameters. Each engine compiles a
spec once against its tokenizer (xgrammar caches it by its text), and gives each constrained
request a matcher. In a step, the rows of constrained requests get their allowed-token bitmask
applied to their logits, and each matcher then takes its sampled token. Rows of unconstrained
requests are not touched. The masks are filled on a worker thread while the forward runs (on
this 2-core CPU that took 0.095 ms per constrained token off the step's path, against 0.128 ms
filling them after the forward; with the model on a GPU the fill hides wholly behind it).

Why xgrammar: filling one token mask per row for a batch of 32 with a JSON schema over a 49k
vocabulary takes 0.41 ms a step here, against 1.19 ms for llguidance and 11.4 ms for
outlines-core (whose index for that schema also took 110 ms to build, against 13 ms to compile).
"""
from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

import torch

from omnistage.errors import RequestRejected

Kind = Literal["json_schema", "json_object", "regex", "choice", "grammar", "structural_tag"]
CACHED_GRAMMARS = 256  # compiled grammars an engine keeps, least recently used dropped first
_EXTENSION_KEYS = {"json": "json_schema", "json_object": "json_object", "regex": "regex", "choice": "choice",
                   "grammar": "grammar", "structural_tag": "structural_tag"}


@dataclass(frozen=True)
class GuideSpec:
    """What a request's output must match. ``value``: the schema or structural tag as JSON, the
    regex, the EBNF, or the choices as a JSON list; ``param``: the request field it came from
    (named in errors)."""

    kind: Kind
    value: str
    param: str = "response_format"


def guide_from_request(params: Mapping[str, Any]) -> GuideSpec | None:
    """The request's ``response_format`` or ``structured_outputs`` as a spec (None: free text)."""
    fmt, ext = params.get("response_format"), params.get("structured_outputs")
    if fmt is not None and ext is not None:
        raise RequestRejected("give response_format or structured_outputs, not both", param="structured_outputs")
    if fmt is not None:
        return _response_format(fmt)
    return None if ext is None else _structured_outputs(ext)


def _response_format(fmt: Any) -> GuideSpec | None:
    kind = fmt.get("type") if isinstance(fmt, Mapping) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return GuideSpec("json_object", "")
    if kind == "json_schema":
        spec = fmt.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, Mapping) else None
        if not isinstance(schema, Mapping):
            raise RequestRejected("response_format json_schema needs json_schema.schema, a JSON schema object",
                                  param="response_format.json_schema.schema")
        return GuideSpec("json_schema", json.dumps(schema))
    if kind == "structural_tag":
        return GuideSpec("structural_tag", json.dumps({k: v for k, v in fmt.items()}))
    raise RequestRejected("response_format.type must be text, json_object, json_schema or structural_tag, "
                          f"got {kind!r}", param="response_format.type")


def _structured_outputs(ext: Any) -> GuideSpec:
    given = [k for k in _EXTENSION_KEYS if isinstance(ext, Mapping) and ext.get(k) not in (None, False)]
    unknown = sorted(set(ext) - set(_EXTENSION_KEYS)) if isinstance(ext, Mapping) else []
    if unknown or len(given) != 1:
        raise RequestRejected("structured_outputs takes exactly one of " + ", ".join(_EXTENSION_KEYS)
                              + (f"; unknown: {', '.join(unknown)}" if unknown else ""), param="structured_outputs")
    key = given[0]
    value, param = ext[key], f"structured_outputs.{key}"
    if key == "json_object":
        return GuideSpec("json_object", "", param)
    if key == "json" and isinstance(value, Mapping):
        return GuideSpec("json_schema", json.dumps(value), param)
    if key == "structural_tag" and isinstance(value, Mapping):
        return GuideSpec("structural_tag", json.dumps(value), param)
    if key == "choice":
        if not isinstance(value, list) or not value or not all(isinstance(c, str) and c for c in value):
            raise RequestRejected("structured_outputs.choice must be a list of non-empty strings", param=param)
        return GuideSpec("choice", json.dumps(value), param)
    if not isinstance(value, str) or not value:
        raise RequestRejected(f"{param} must be a non-empty string", param=param)
    return GuideSpec(_EXTENSION_KEYS[key], value, param)  # type: ignore[arg-type]


class Guides:
    """One engine's grammar compiler (its tokenizer and logits width) and the bitmask its steps
    fill. Not thread-safe: the engine's loop calls it; only ``start``'s fill runs on the pool."""

    def __init__(self, tokenizer: Any, vocab_size: int, stop_ids: Sequence[int], max_rows: int) -> None:
        import xgrammar as xgr  # (only engines whose requests ask for structured output load it)
        self.xgr = xgr
        info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size, stop_token_ids=sorted(stop_ids))
        self.compiler = xgr.GrammarCompiler(info, cache_enabled=True)
        self.compiled: dict[GuideSpec, Any] = {}
        self.vocab_size = vocab_size
        self.bitmask = xgr.allocate_token_bitmask(max_rows, vocab_size)
        self.batch = xgr.BatchGrammarMatcher()
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="guided")

    def compile(self, spec: GuideSpec) -> Any:
        """The compiled grammar, cached by its spec (a request's is asked for when it is checked,
        added and matched: the schema is converted once); a spec xgrammar refuses is a
        RequestRejected."""
        if spec in self.compiled:
            self.compiled[spec] = self.compiled.pop(spec)  # (most recently used last)
            return self.compiled[spec]
        try:
            grammar = self._compile(spec)
        except (RuntimeError, ValueError, TypeError) as exc:  # xgrammar's errors for a bad schema, regex or EBNF
            raise RequestRejected(f"{spec.param} cannot be compiled into a grammar: {_first_line(exc)}",
                                  param=spec.param) from None
        self.compiled[spec] = grammar
        if len(self.compiled) > CACHED_GRAMMARS:
            del self.compiled[next(iter(self.compiled))]
        return grammar

    def _compile(self, spec: GuideSpec) -> Any:
        c = self.compiler
        # No whitespace between tokens, as vLLM's disable_any_whitespace: a small model given free
        # whitespace can spend its whole budget on it.
        if spec.kind == "json_object":  # (an object, as OpenAI's json_object: not any JSON value)
            return c.compile_json_schema('{"type": "object"}', any_whitespace=False, separators=(",", ":"),
                                         strict_mode=False)
        if spec.kind == "json_schema":
            grammar = self.xgr.Grammar.from_json_schema(spec.value, any_whitespace=False, separators=(",", ":"),
                                                        strict_mode=True)
            return c.compile_grammar(_strict_strings(str(grammar)))
        if spec.kind == "regex":
            return c.compile_regex(spec.value)
        if spec.kind == "choice":
            return c.compile_regex("|".join(_literal(choice) for choice in json.loads(spec.value)))
        if spec.kind == "grammar":
            return c.compile_grammar(spec.value)
        return c.compile_structural_tag(spec.value)

    def matcher(self, spec: GuideSpec, output: Sequence[int] = ()) -> Any:
        """A request's matcher, past the tokens it already has (a prefilled request's first)."""
        matcher = self.xgr.GrammarMatcher(self.compile(spec))
        for token in output:
            matcher.accept_token(token)
        return matcher

    def start(self, matchers: Sequence[Any], rows: Sequence[int]) -> Future[None]:
        """Fill the bitmask rows ``rows`` for ``matchers`` on the pool (while the forward runs)."""
        return self.pool.submit(self.batch.batch_fill_next_token_bitmask, list(matchers), self.bitmask, list(rows))

    def apply(self, filled: Future[None], logits: torch.Tensor, rows: Sequence[int]) -> None:
        """Wait for ``start``'s fill and mask those rows of ``logits`` (float32, in place)."""
        filled.result()
        self.xgr.apply_token_bitmask_inplace(logits, self.bitmask[:logits.shape[0]].to(logits.device),
                                             vocab_size=self.vocab_size, indices=list(rows))

    def close(self) -> None:
        self.pool.shutdown(wait=False)


# xgrammar writes a length-bounded string's characters as "anything but a quote, a backslash, CR
# or LF": raw control characters (which JSON forbids, and json.loads refuses) pass, escapes do not.
# Its unbounded strings exclude control characters; bounded ones are made to as well.
_BOUNDED_CHARS = '[^\\"\\\\\\r\\n]'
_JSON_CHARS = '[^\\0-\\x1f\\"\\\\]'


def _strict_strings(ebnf: str) -> str:
    return ebnf.replace(_BOUNDED_CHARS, _JSON_CHARS)


def _literal(text: str) -> str:
    """``text`` as a regex that matches it (xgrammar warns on escapes ``re.escape`` adds to spaces)."""
    return re.sub(r"([.^$*+?()\[\]{}|\\/-])", r"\\\1", text)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
