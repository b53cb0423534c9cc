"""Which request-body fields each endpoint takes, and which become the request's parameters.

Every field of a body is one of:
- read by the endpoint itself (``own``: model, messages, stream, size, ...);
- caller metadata that OpenAI clients send by default (``metadata``: user, store, ...): accepted,
  not used;
- an OpenAI field this server does not implement (``unsupported``): refused with a 400 naming it,
  unless its value asks for nothing (``tools: []`` passes, a tool does not);
- anything else: a request parameter, handed to the graph, whose stages refuse (400, named, with
  a suggestion) what none of them reads. Nothing is silently ignored.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from omnistage.api.errors import ApiError
from omnistage.api.request import FormBody, number

_NONE = (None,)


@dataclass(frozen=True)
class Fields:
    own: frozenset[str]
    metadata: frozenset[str] = frozenset({"user"})
    unsupported: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)  # field -> values that ask for nothing
    numeric: Mapping[str, type] = field(default_factory=dict)  # parameters read from form strings as numbers

    def params(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """The body's request parameters (everything not the endpoint's own); raises ApiError for a
        field this server does not implement."""
        for name, harmless in self.unsupported.items():
            if name in body and not any(body[name] == ok and type(body[name]) is type(ok) for ok in harmless):
                raise ApiError(400, f"{name} is not supported by this server", name, "unsupported_parameter")
        skip = self.own | self.metadata | set(self.unsupported)
        params = {k: v for k, v in body.items() if k not in skip and v is not None}  # null: not given
        if isinstance(body, FormBody):  # (a JSON body's types are the client's: "7" stays a string)
            for name, kind in self.numeric.items():
                if name in params:
                    params[name] = number(body, name, kind)
        return params


CHAT = Fields(
    own=frozenset({"model", "messages", "stream", "stream_options", "n", "modalities", "audio", "logprobs",
                   "top_logprobs", "max_tokens", "max_completion_tokens", "return_token_ids", "tools", "tool_choice",
                   "parallel_tool_calls"}),
    metadata=frozenset({"user", "metadata", "store", "service_tier", "safety_identifier", "prompt_cache_key"}),
    unsupported={"functions": (None, []), "function_call": (None, "none", "auto"), "prediction": _NONE,
                 "reasoning_effort": _NONE, "web_search_options": _NONE, "verbosity": _NONE},
)

COMPLETIONS = Fields(
    own=frozenset({"model", "prompt", "stream", "stream_options", "n", "max_tokens", "logprobs", "return_token_ids"}),
    unsupported={"echo": (None, False), "best_of": (None, 1), "suffix": (None, "")},
)

_GENERATION_NUMBERS: Mapping[str, type] = {"num_inference_steps": int, "guidance_scale": float, "seed": int,
                                           "num_frames": int, "fps": int, "height": int, "width": int}

IMAGES = Fields(
    own=frozenset({"model", "prompt", "n", "size", "response_format", "output_format"}),
    unsupported={"quality": (None, "auto", "standard"), "style": _NONE, "background": (None, "auto"),
                 "moderation": (None, "auto"), "output_compression": _NONE, "partial_images": (None, 0),
                 "stream": (None, False)},
)

IMAGE_EDITS = Fields(
    own=frozenset({"model", "prompt", "n", "size", "response_format", "output_format", "image", "image[]", "mask"}),
    # (a form's values are strings: "false" asks for no stream as False does)
    unsupported={**IMAGES.unsupported, "input_fidelity": (None, "low"), "stream": (None, False, "false"),
                 "partial_images": (None, 0, "0")},
    numeric={**_GENERATION_NUMBERS, "strength": float},
)

VIDEOS = Fields(
    own=frozenset({"model", "prompt", "seconds", "size"}),
    unsupported={"input_reference": _NONE},
    numeric=_GENERATION_NUMBERS,
)

SPEECH = Fields(
    own=frozenset({"model", "input", "response_format", "stream_format", "stream"}),
    unsupported={"instructions": (None, "")},
    numeric={"speed": float},
)

TRANSCRIPTIONS = Fields(
    own=frozenset({"model", "file", "response_format", "stream", "timestamp_granularities",
                   "timestamp_granularities[]"}),
    unsupported={"include": _NONE, "include[]": _NONE, "chunking_strategy": _NONE},
    numeric={"max_tokens": int, "temperature": float},
)

TRANSLATIONS = Fields(
    own=frozenset({"model", "file", "response_format"}),
    numeric={"max_tokens": int, "temperature": float},
)

EMBEDDINGS = Fields(own=frozenset({"model", "input", "encoding_format"}))
