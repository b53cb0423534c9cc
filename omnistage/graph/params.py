"""Request parameters: what each stage kind reads from a request, with its type and range.

A request's parameters are checked when it is submitted, before any stage computes: one that no
stage on the request's route reads is refused ("unknown parameter 'max_token'; did you mean
'max_tokens'?"), as is a value of the wrong type or out of range. Checks that depend on the
loaded model (a diffusion model's size multiple, a speaker's name) are the kind's
``check_params`` function, run after these. Pure data: no torch.
"""
from __future__ import annotations

import difflib
import math
import operator
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from omnistage.errors import RequestRejected
from omnistage.graph.strict import suggest

ParamType = Literal["int", "float", "bool", "str", "strs", "ints", "any"]
SEED_LIMIT = 1 << 63  # seeds are 63-bit integers, for every generator that takes one

_TYPE_WORDS = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string",
               "strs": "a string or a list of strings", "ints": "a list of integers", "any": "any value"}


@dataclass(frozen=True)
class ParamSpec:
    """One request parameter a kind reads. ``default`` documents what an absent value means (None:
    the stage's option or the model's own)."""

    name: str
    type: ParamType
    default: Any = None
    ge: float | None = None  # inclusive lower bound
    gt: float | None = None  # exclusive lower bound
    le: float | None = None  # inclusive upper bound
    lt: float | None = None  # exclusive upper bound
    choices: tuple[str, ...] = ()
    max_items: int | None = None  # for "strs" / "ints"
    description: str = ""

    def check(self, value: Any) -> None:
        """Raise RequestRejected (400, naming the parameter) unless ``value`` fits."""
        if value is None:
            return
        if not _is_type(self.type, value):
            raise RequestRejected(f"{self.name} must be {_TYPE_WORDS[self.type]}, got {value!r}", param=self.name)
        if self.type in ("int", "float"):
            self._check_range(value)
        elif self.type == "str" and self.choices and value not in self.choices:
            raise RequestRejected(f"{self.name} must be one of {', '.join(self.choices)}, got {value!r}"
                                  f"{suggest(value, self.choices)}", param=self.name)
        elif self.type in ("strs", "ints"):
            items = [value] if isinstance(value, str) else value
            if self.type == "strs" and not all(items):
                raise RequestRejected(f"{self.name} must not hold empty strings", param=self.name)
            if self.max_items is not None and len(items) > self.max_items:
                raise RequestRejected(f"{self.name} takes at most {self.max_items} items, got {len(items)}",
                                      param=self.name)

    def _check_range(self, value: float) -> None:
        bounds = [(bound, op) for bound, op in ((self.ge, ">="), (self.gt, ">"), (self.le, "<="), (self.lt, "<"))
                  if bound is not None]
        if all(_COMPARE[op](value, bound) for bound, op in bounds):
            return
        if self.ge is not None and self.le is not None:
            limits = f"between {_number(self.ge)} and {_number(self.le)}"
        else:
            limits = " and ".join(f"{op} {_number(bound)}" for bound, op in bounds)
        raise RequestRejected(f"{self.name} must be {limits}, got {value!r}", param=self.name)


_COMPARE = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt}


def _number(bound: float) -> str:
    return str(int(bound)) if float(bound).is_integer() else str(bound)


def _is_type(tp: str, value: Any) -> bool:
    if tp == "any":
        return True
    if tp == "bool":
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if tp == "int":
        return isinstance(value, int)
    if tp == "float":
        return isinstance(value, (int, float)) and math.isfinite(value)
    if tp == "str":
        return isinstance(value, str)
    if tp == "strs":
        return isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value))
    return isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)


def check_request(params: Mapping[str, Any], readers: Mapping[str, Iterable[ParamSpec]],
                  elsewhere: Iterable[str] = ()) -> None:
    """Check ``params`` against what the stages of a request's route read (``readers``: stage ->
    its parameters). ``elsewhere``: parameters only stages off this route read. Raises
    RequestRejected naming the first bad parameter."""
    specs: dict[str, list[ParamSpec]] = {}
    params = {name: value for name, value in params.items() if value is not None}  # None: not given
    for stage_params in readers.values():
        for spec in stage_params:
            specs.setdefault(spec.name, []).append(spec)
    off_route = set(elsewhere) - set(specs)
    for name, value in params.items():
        if name in specs:
            for spec in specs[name]:
                spec.check(value)
        elif name in off_route:
            raise RequestRejected(f"parameter {name!r} does not apply to this request: none of its stages "
                                  f"({', '.join(readers) or 'none'}) reads it", param=name)
        else:
            known = sorted(specs)
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else "."
            raise RequestRejected(f"unknown parameter {name!r}{hint} This request's stages take: "
                                  f"{', '.join(known) or 'none'}", param=name)


# --- what the built-in kinds read ---------------------------------------------------------
SEED = ParamSpec("seed", "int", ge=0, lt=SEED_LIMIT, description="makes sampling (or the initial noise) repeatable")

SAMPLING = (
    ParamSpec("max_tokens", "int", ge=1, description="tokens to generate at most (default: the stage's max_tokens)"),
    ParamSpec("temperature", "float", 1.0, ge=0, le=2, description="0 is greedy"),
    ParamSpec("top_p", "float", 1.0, gt=0, le=1),
    ParamSpec("top_k", "int", 0, ge=0, description="0: no limit"),
    ParamSpec("min_p", "float", 0.0, ge=0, le=1),
    ParamSpec("repetition_penalty", "float", 1.0, gt=0),
    ParamSpec("presence_penalty", "float", 0.0, ge=-2, le=2,
              description="subtracted once from every token already generated"),
    ParamSpec("frequency_penalty", "float", 0.0, ge=-2, le=2,
              description="subtracted per occurrence from every token already generated"),
    ParamSpec("logit_bias", "any", description="token id -> a bias between -100 and 100 added to its logit"),
    SEED,
    ParamSpec("stop", "strs", max_items=16, description="strings that end the answer (not included)"),
    ParamSpec("stop_token_ids", "ints", max_items=64),
    ParamSpec("ignore_eos", "bool", False),
    ParamSpec("logprobs", "int", ge=0, le=20, description="return the sampled token's logprob and this many alternatives"),
    ParamSpec("response_format", "any", description="OpenAI's: json_object, json_schema or structural_tag output"),
    ParamSpec("tools", "any", description="function tools the chat template renders (the chat API checks them)"),
    ParamSpec("structured_outputs", "any",
              description="vLLM's: one of json, regex, choice, grammar (EBNF), json_object, structural_tag"),
    ParamSpec("use_audio_in_video", "bool", False, description="a video file's sound track goes in with its frames"),
)

GENERATION = (
    ParamSpec("height", "int", gt=0, description="default: the stage's option, else the model's"),
    ParamSpec("width", "int", gt=0),
    ParamSpec("num_frames", "int", gt=0, description="video models only"),
    ParamSpec("num_inference_steps", "int", ge=1),
    ParamSpec("guidance_scale", "float", ge=0, le=100),
    SEED,
    ParamSpec("scheduler", "str", "default"),
    ParamSpec("negative_prompt", "str", ""),
    ParamSpec("output_format", "str", choices=("png", "jpeg", "webp", "raw", "mp4", "gif")),
    ParamSpec("fps", "int", ge=1, le=120, description="video models only"),
    ParamSpec("strength", "float", 0.8, gt=0, le=1, description="with an input image: how much of it is noised away"),
    ParamSpec("cache", "any", description="step caching: {policy: off|reuse, threshold} (default: the stage's)"),
    ParamSpec("lora", "any", description="a LoRA the stage registers (options.loras): {name, scale (default 1)}"),
)

SPEECH = (
    ParamSpec("voice", "str", description="default: the stage's default_voice"),
    ParamSpec("speed", "float", 1.0, ge=0.25, le=4.0),
)

EMBEDDING = (ParamSpec("dimensions", "int", ge=1, description="a Matryoshka model's first d values, renormalized"),)

TRANSCRIPTION = (
    ParamSpec("max_tokens", "int", ge=1, description="tokens per audio window (default: the stage's)"),
    ParamSpec("language", "str", description="the audio's language as an ISO-639-1 code (default: detected)"),
    ParamSpec("initial_prompt", "str",
              description="text the transcript continues (names, spelling, style): the API's prompt field"),
    ParamSpec("temperature", "float", 0.0, ge=0, le=1, description="0 is greedy"),
    ParamSpec("task", "str", "transcribe", choices=("transcribe", "translate"),
              description="translate: into English (/v1/audio/translations sets it)"),
    ParamSpec("word_timestamps", "bool", False,
              description="time each word (timestamp_granularities word); decodes with timestamp tokens"),
)

SPOKEN_REPLY = (ParamSpec("voice", "str", description="a speaker of the checkpoint (default: default_voice)"), SEED)
