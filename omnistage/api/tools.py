"""Tool calling on the chat endpoint: ``tools``, ``tool_choice`` and ``parallel_tool_calls``
checked; the served model's tool-call format (``tool_parsers``); the structural tag that forces
a call (``required`` or a named function); the calls read back into ``message.tool_calls``.

The tools reach the stage as the ``tools`` parameter, which its chat template renders. As vLLM
does, ``tool_choice: none`` still renders them (the conversation may hold earlier calls) but
reads no calls back; ``auto`` lets the model choose and reads calls out of its text.
"""
from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request

from omnistage.api.errors import ApiError
from omnistage.api.tool_parsers import detect
from omnistage.checkpoints.loading import checkpoint_dir

_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_FUNCTION_KEYS = {"name", "description", "parameters", "strict"}
_CHAT_KINDS = ("ar", "prefill")


@dataclass(frozen=True)
class ToolRequest:
    tools: list[dict[str, Any]]
    choice: str  # "none", "auto", "required" or "function" (``named``)
    named: str | None = None
    parallel: bool = True

    @property
    def forced(self) -> bool:
        return self.choice in ("required", "function")

    def forced_tools(self) -> list[dict[str, Any]]:
        return [t for t in self.tools if self.named is None or t["function"]["name"] == self.named]


def tool_request(body: Mapping[str, Any]) -> ToolRequest | None:
    """The request's tools and choice, checked (400 naming the field); None without tools."""
    tools, choice, parallel = body.get("tools"), body.get("tool_choice"), body.get("parallel_tool_calls")
    if parallel is not None and not isinstance(parallel, bool):
        raise ApiError(400, "parallel_tool_calls must be true or false", "parallel_tool_calls")
    if not tools:
        if tools is not None and not isinstance(tools, list):
            raise ApiError(400, "tools must be a list of function tools", "tools")
        if choice not in (None, "none", "auto"):
            raise ApiError(400, "tool_choice needs tools", "tool_choice")
        return None
    if not isinstance(tools, list):
        raise ApiError(400, "tools must be a list of function tools", "tools")
    checked = [_tool(t, i) for i, t in enumerate(tools)]
    names = [t["function"]["name"] for t in checked]
    if len(set(names)) != len(names):
        raise ApiError(400, "tools have the same function name twice", "tools")
    if choice is None or choice in ("none", "auto", "required"):
        return ToolRequest(checked, choice or "auto", None, parallel is not False)
    fn = choice.get("function") if isinstance(choice, Mapping) and choice.get("type") == "function" else None
    name = fn.get("name") if isinstance(fn, Mapping) else None
    if not isinstance(name, str):
        raise ApiError(400, 'tool_choice must be "none", "auto", "required" or {"type": "function", '
                            '"function": {"name": ...}}', "tool_choice")
    if name not in names:
        raise ApiError(400, f"tool_choice names {name!r}, which is not among the tools", "tool_choice")
    return ToolRequest(checked, "function", name, parallel is not False)


def _tool(tool: Any, i: int) -> dict[str, Any]:
    where = f"tools[{i}]"
    if not isinstance(tool, Mapping) or tool.get("type") != "function" or not isinstance(tool.get("function"), Mapping):
        raise ApiError(400, f'{where} must be {{"type": "function", "function": {{...}}}}', where)
    if set(tool) - {"type", "function"}:
        raise ApiError(400, f"{where} has unknown fields: {', '.join(sorted(set(tool) - {'type', 'function'}))}", where)
    fn = tool["function"]
    unknown = set(fn) - _FUNCTION_KEYS
    if unknown:
        raise ApiError(400, f"{where}.function has unknown fields: {', '.join(sorted(unknown))}", f"{where}.function")
    if not isinstance(fn.get("name"), str) or not _NAME.match(fn["name"]):
        raise ApiError(400, f"{where}.function.name must be 1-64 letters, digits, _ or -", f"{where}.function.name")
    if fn.get("parameters") is not None and not isinstance(fn["parameters"], Mapping):
        raise ApiError(400, f"{where}.function.parameters must be a JSON schema object", f"{where}.function.parameters")
    return {"type": "function", "function": dict(fn)}


async def tool_format(request: Request) -> Any:
    """The served chat model's tool-call format (found once, from its chat template), or a 400
    if it has none this server reads."""
    state = request.app.state
    if not hasattr(state, "tool_format"):
        state.tool_format = await asyncio.to_thread(_find_format, state.pipeline.plan)
    if state.tool_format is None:
        raise ApiError(400, "this model's chat template writes no tool-call format this server reads "
                            "(hermes <tool_call> or Llama 3 JSON)", "tools")
    return state.tool_format


def _find_format(plan: Any) -> Any:
    from transformers import AutoTokenizer  # (the API process loads it only for a request with tools)
    route = plan.route_for(frozenset({"messages"}), frozenset({"text"}))
    for name in route.stages:
        stage = plan.stages[name]
        if stage.kind.name in _CHAT_KINDS and stage.model_path is not None:
            return detect(AutoTokenizer.from_pretrained(checkpoint_dir(stage.model_path)))
    return None


def message(text: str, parser: Any) -> tuple[dict[str, Any], bool]:
    """The assistant message for ``text`` (its calls read when ``parser`` is given) and whether
    it holds calls."""
    if parser is None:
        return {"role": "assistant", "content": text}, False
    content, calls = parser.parse(text)
    if not calls:
        return {"role": "assistant", "content": text}, False
    return {"role": "assistant", "content": content, "tool_calls": calls}, True


def stream_deltas(stream: Any, content: str, calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Chat-chunk deltas for what a ``ToolStream`` gave: the content, then each call whole (with
    its index among the choice's calls)."""
    out: list[dict[str, Any]] = [{"content": content}] if content else []
    first = stream.calls - len(calls)
    out += [{"tool_calls": [{"index": first + k, **call}]} for k, call in enumerate(calls)]
    return out


def checked_params(tooling: ToolRequest, params: dict[str, Any], parser: Any) -> None:
    """Put the tools (and a forced call's structural tag) into the request's parameters."""
    params["tools"] = tooling.tools
    if not tooling.forced:
        return
    taken = next((name for name in ("response_format", "structured_outputs") if name in params), None)
    if taken is not None:
        raise ApiError(400, f"tool_choice {tooling.choice!r} constrains the output to a call; {taken} cannot "
                            "constrain it too", taken)
    params["response_format"] = parser.structural_tag(tooling.forced_tools(), tooling.parallel)
