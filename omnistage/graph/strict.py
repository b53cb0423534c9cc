"""Strict parsing of plain YAML data into frozen dataclasses.

Every problem is reported with its YAML path (``stages.llm.batching.max_batch``), the value
found and what was expected; an unknown key gets a "did you mean" suggestion. Problems are
collected, not raised one at a time, so a user sees every mistake in one run.
"""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, Union

from omnistage.errors import ConfigIssue

_MISSING = object()


def suggest(word: str, choices: typing.Iterable[str]) -> str:
    """' (did you mean "x"?)' when a close match exists, else ''."""
    match = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f' (did you mean "{match[0]}"?)' if match else ""


def join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


class Parser:
    """Collects issues while converting data to typed values."""

    def __init__(self) -> None:
        self.issues: list[ConfigIssue] = []

    def error(self, path: str, message: str) -> object:
        self.issues.append(ConfigIssue(path, message))
        return _MISSING

    def parse(self, tp: Any, value: Any, path: str) -> Any:
        """Convert ``value`` to type ``tp``; on failure record an issue and return _MISSING."""
        origin = typing.get_origin(tp)
        if tp is Any:
            return value
        if dataclasses.is_dataclass(tp):
            return self.parse_dataclass(tp, value, path)
        if origin is Literal:
            allowed = typing.get_args(tp)
            if value in allowed:
                return value
            shown = ", ".join(repr(a) for a in allowed)
            return self.error(path, f"got {value!r}, expected one of {shown}{suggest(str(value), map(str, allowed))}")
        if origin in (Union, types.UnionType):
            return self._parse_union(tp, value, path)
        if origin in (Mapping, dict) or tp in (Mapping, dict):
            return self._parse_mapping(tp, value, path)
        if origin is tuple:
            return self._parse_tuple(tp, value, path)
        return self._parse_scalar(tp, value, path)

    def _parse_union(self, tp: Any, value: Any, path: str) -> Any:
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            trial = Parser()
            out = trial.parse(arg, value, path)
            if not trial.issues:
                return out
        shaped = [a for a in args if dataclasses.is_dataclass(a)]
        if isinstance(value, Mapping) and len(shaped) == 1:
            return self.parse(shaped[0], value, path)  # a mapping meant that section: its own errors
        names = " or ".join(_type_name(a) for a in args)
        return self.error(path, f"got {value!r}, expected {names}")

    def _parse_mapping(self, tp: Any, value: Any, path: str) -> Any:
        if not isinstance(value, Mapping):
            return self.error(path, f"got {_describe(value)}, expected a mapping")
        args = typing.get_args(tp) or (str, Any)
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                self.error(join(path, str(key)), f"key {key!r} must be a string")
                continue
            parsed = self.parse(args[1], item, join(path, key))
            if parsed is not _MISSING:
                out[key] = parsed
        return FrozenDict(out)

    def _parse_tuple(self, tp: Any, value: Any, path: str) -> Any:
        if not isinstance(value, (list, tuple)):
            return self.error(path, f"got {_describe(value)}, expected a list")
        item_tp = typing.get_args(tp)[0]
        items = [self.parse(item_tp, v, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(i for i in items if i is not _MISSING)

    def _parse_scalar(self, tp: Any, value: Any, path: str) -> Any:
        if tp is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if tp is int and isinstance(value, bool):
            return self.error(path, f"got {value!r}, expected an integer")
        if isinstance(tp, type) and isinstance(value, tp):
            return value
        return self.error(path, f"got {_describe(value)}, expected {_type_name(tp)}")

    def parse_dataclass(self, cls: Any, value: Any, path: str) -> Any:
        if value is None:
            value = {}
        if not isinstance(value, Mapping):
            return self.error(path, f"got {_describe(value)}, expected a mapping")
        fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
        hints = typing.get_type_hints(cls)
        for key in value:
            if key not in fields:
                self.error(join(path, str(key)), f"unknown key{suggest(str(key), fields)}; allowed: {', '.join(fields)}")
        kwargs = {}
        for name, field in fields.items():
            if name in value:
                parsed = self.parse(hints[name], value[name], join(path, name))
                if parsed is not _MISSING:
                    kwargs[name] = parsed
            elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
                self.error(join(path, name), "required key is missing")
        if self.issues_under(path):
            return _MISSING
        try:
            return cls(**kwargs)
        except ValueError as exc:  # a __post_init__ range check
            return self.error(path, str(exc))

    def issues_under(self, path: str) -> bool:
        return any(i.path == path or i.path.startswith(path + ".") or i.path.startswith(path + "[") or not path
                   for i in self.issues)


def _describe(value: Any) -> str:
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    return f"{value!r} ({type(value).__name__})"


def _type_name(tp: Any) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false",
             type(None): "null"}
    if tp in names:
        return names[tp]
    if typing.get_origin(tp) is Literal:
        return " or ".join(repr(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp))


class FrozenDict(dict):  # type: ignore[type-arg]
    """A read-only dict that, unlike MappingProxyType, pickles (plans go to spawned workers)."""

    def _readonly(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("this mapping is frozen")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = _readonly  # type: ignore[assignment]
    __ior__ = _readonly  # type: ignore[assignment]

    def __reduce__(self) -> tuple[Any, ...]:
        return (FrozenDict, (dict(self),))


def frozen_dict(data: Mapping[Any, Any] | None = None) -> Mapping[Any, Any]:
    return FrozenDict(data or {})
