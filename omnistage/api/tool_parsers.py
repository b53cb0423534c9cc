"""Tool-call formats: how a model writes a call, read back out of its text (whole, or as it
streams), and the structural tag that forces a call in that format.

- ``hermes`` (Qwen2.5, Qwen3, Hermes): ``<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>``,
  any number of them, with text around them.
- ``llama3_json`` (Llama 3.1/3.2/3.3 with JSON tools): the answer is ``{"name": ...,
  "parameters": {...}}``, several separated by ``;``, optionally after ``<|python_tag|>``.

Which one a model uses is found by rendering its chat template (``detect``).
"""
from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from jinja2 import TemplateError

PROBE = "omnistage_probe_tool"
_DECODER = json.JSONDecoder()


def tool_call(name: str, arguments: Any) -> dict[str, Any]:
    """One call in OpenAI's shape (arguments as a JSON string)."""
    args = arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)
    return {"id": "call_" + uuid.uuid4().hex[:24], "type": "function", "function": {"name": name, "arguments": args}}


def _call(obj: Any, args_key: str) -> dict[str, Any] | None:
    if not isinstance(obj, Mapping) or not isinstance(obj.get("name"), str):
        return None
    args = obj.get(args_key, obj.get("arguments", obj.get("parameters", {})))
    return tool_call(obj["name"], args if args is not None else {})


@dataclass(frozen=True)
class Hermes:
    name: str = "hermes"
    begin: str = "<tool_call>"
    end: str = "</tool_call>"

    def parse(self, text: str) -> tuple[str | None, list[dict[str, Any]]]:
        """(the text outside calls, or None if only calls; the calls). A call the model left
        open at the end is read if its JSON is whole; one that does not parse stays text."""
        content, calls, rest = [], [], text
        while (start := rest.find(self.begin)) >= 0:
            stop = rest.find(self.end, start)
            body = rest[start + len(self.begin):stop if stop >= 0 else len(rest)]
            call = _call(_json(body.strip()), "arguments")
            if call is None:
                break
            content.append(rest[:start])
            calls.append(call)
            rest = rest[stop + len(self.end):] if stop >= 0 else ""
        content.append(rest)
        joined = "".join(content).strip() if calls else "".join(content)
        return joined or None, calls

    def structural_tag(self, tools: Sequence[Mapping[str, Any]], parallel: bool) -> dict[str, Any]:
        tags = [{"type": "tag", "begin": f'{self.begin}\n{{"name": "{fn["name"]}", "arguments": ',
                 "content": {"type": "json_schema", "json_schema": _parameters(fn)}, "end": f"}}\n{self.end}"}
                for fn in (t["function"] for t in tools)]
        return _tags(tags, "\n", parallel)

    def stream(self) -> ToolStream:
        return ToolStream(self)


@dataclass(frozen=True)
class Llama3Json:
    name: str = "llama3_json"
    begin: str = "{"
    python_tag: str = "<|python_tag|>"

    def parse(self, text: str) -> tuple[str | None, list[dict[str, Any]]]:
        """The whole answer as calls if it is one or more call objects separated by ``;``, else text."""
        body = text.strip().removeprefix(self.python_tag).strip()
        calls, pos = [], 0
        while body.startswith("{", pos):
            try:
                obj, pos = _DECODER.raw_decode(body, pos)
            except ValueError:
                return text or None, []
            call = _call(obj, "parameters")
            if call is None:
                return text or None, []
            calls.append(call)
            pos = len(body) - len(body[pos:].lstrip().removeprefix(";").lstrip())
        return (None, calls) if calls and pos == len(body) else (text or None, [])

    def structural_tag(self, tools: Sequence[Mapping[str, Any]], parallel: bool) -> dict[str, Any]:
        tags = [{"type": "tag", "begin": f'{{"name": "{fn["name"]}", "parameters": ',
                 "content": {"type": "json_schema", "json_schema": _parameters(fn)}, "end": "}"}
                for fn in (t["function"] for t in tools)]
        return _tags(tags, "; ", parallel)

    def stream(self) -> ToolStream:
        return ToolStream(self, whole=True)


FORMATS = {f.name: f for f in (Hermes(), Llama3Json())}


def _parameters(fn: Mapping[str, Any]) -> Any:
    return fn.get("parameters") or {"type": "object", "properties": {}}


def _tags(tags: list[dict[str, Any]], separator: str, parallel: bool) -> dict[str, Any]:
    return {"type": "structural_tag", "format": {"type": "tags_with_separator", "tags": tags, "separator": separator,
                                                 "at_least_one": True, "stop_after_first": not parallel}}


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


@dataclass
class ToolStream:
    """Text deltas in, (content delta, finished calls) out. Content streams as it comes, except a
    tail that could begin a call; a call is sent once whole. ``whole``: a format whose calls are
    the whole answer (llama3_json): an answer that starts like a call is held to the end."""

    fmt: Any
    whole: bool = False
    text: str = ""
    sent: int = 0  # characters of ``text`` settled (sent as content or read as calls)
    calls: int = 0
    holding: bool = False  # (whole) the answer started like a call
    started: bool = field(default=False)

    def feed(self, delta: str) -> tuple[str, list[dict[str, Any]]]:
        self.text += delta
        if self.whole:
            return self._feed_whole()
        out, calls = [], []
        while True:
            pending = self.text[self.sent:]
            start = pending.find(self.fmt.begin)
            if start < 0:
                keep = _partial_suffix(pending, self.fmt.begin)
                out.append(pending[:len(pending) - keep])
                self.sent += len(pending) - keep
                break
            stop = pending.find(self.fmt.end, start)
            out.append(pending[:start])
            if stop < 0:
                self.sent += start
                break
            _, found = self.fmt.parse(pending[start:stop + len(self.fmt.end)])
            calls += found
            self.sent += stop + len(self.fmt.end)
        self.calls += len(calls)
        return "".join(out) if not self.calls else "".join(out).strip(), calls

    def _feed_whole(self) -> tuple[str, list[dict[str, Any]]]:
        if not self.started:
            head = self.text.lstrip()
            if not head or self.fmt.python_tag.startswith(head):
                return "", []
            self.started = True
            self.holding = head.startswith((self.fmt.begin, self.fmt.python_tag))
        if self.holding:
            return "", []
        delta, self.sent = self.text[self.sent:], len(self.text)
        return delta, []

    def finish(self) -> tuple[str, list[dict[str, Any]]]:
        """What is left at the end: held text, and calls the format reads from it."""
        rest = self.text[self.sent:]
        self.sent = len(self.text)
        content, calls = self.fmt.parse(rest) if rest.strip() else (rest or None, [])
        self.calls += len(calls)
        return content or "", calls


def _partial_suffix(text: str, marker: str) -> int:
    """Length of the longest tail of ``text`` that is a proper prefix of ``marker``."""
    for k in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:k]):
            return k
    return 0


def detect(tokenizer: Any) -> Any:
    """The tool-call format the tokenizer's chat template writes calls in, or None. Found by
    rendering an assistant turn that calls a probe tool."""
    tools = [{"type": "function", "function": {"name": PROBE, "parameters": {"type": "object", "properties": {}}}}]
    call = {"id": "call_0", "type": "function", "function": {"name": PROBE, "arguments": {"k": 1}}}
    messages = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "", "tool_calls": [call]}]
    try:
        text = tokenizer.apply_chat_template(messages, tools=tools, tokenize=False)
    except (TemplateError, KeyError, TypeError, ValueError):  # a template that cannot render calls
        return None
    for fmt in FORMATS.values():
        content, calls = fmt.parse(_assistant_turn(text))
        if calls and calls[0]["function"]["name"] == PROBE:
            return fmt
    return None


def _assistant_turn(text: str) -> str:
    """The rendered probe call: the text after the user's "x" up to the template's end of turn."""
    tail = text[text.rfind("x") + 1:]
    for marker in ("<tool_call>", '{"name"', "<|python_tag|>"):
        if (at := tail.find(marker)) >= 0:
            tail = tail[at:]
            break
    for end in ("<|im_end|>", "<|eot_id|>", "<|eom_id|>", "</s>", "<|end|>"):
        tail = tail.split(end)[0]
    return tail
