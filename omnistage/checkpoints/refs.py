"""What a graph's ``models.<name>.path`` may say, read in one place. Pure Python (no torch):
``omnistage validate`` resolves every reference without loading anything.

- ``tiny:<name>`` is a tiny random-weight checkpoint ``omnistage tiny-models`` builds;
  ``tiny:<name>/<dir>`` a sub-model directory inside it (``tiny:qwen2.5-omni/thinker``). It stays
  symbolic in the plan; a worker builds it (once, cached) when it loads.
- a local directory, relative to the graph file's directory or absolute;
- ``packaged:<name>``: a real checkpoint shipped in a registry package (``checkpoints.packaged``),
  or its tiny stand-in when that package is not installed;
- ``org/name`` that is not a local directory: a hub id, loaded from a hub where one is reachable.
"""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from pathlib import Path

from omnistage.checkpoints.packaged import parse_packaged, resolve_packaged
from omnistage.models.catalog import TINY_MODELS

TINY_PREFIX = "tiny:"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class TinyRef:
    name: str  # a key of TINY_MODELS
    sub: str = ""  # a sub-model directory inside it, or "" for the whole checkpoint

    def __str__(self) -> str:
        return f"{TINY_PREFIX}{self.name}/{self.sub}" if self.sub else f"{TINY_PREFIX}{self.name}"


def parse_tiny(ref: str) -> TinyRef | None:
    """The tiny checkpoint ``ref`` names, or None when it names none."""
    if not ref.startswith(TINY_PREFIX):
        return None
    name, _, sub = ref[len(TINY_PREFIX):].partition("/")
    return TinyRef(name, sub)


def resolve_model(ref: str, base_dir: Path) -> str:
    """The reference a worker will load: ``tiny:`` as written, a local directory made absolute,
    a hub id as written. Raises ValueError saying why ``ref`` cannot be loaded."""
    packaged = parse_packaged(ref)
    if packaged is not None:
        return resolve_packaged(packaged)
    tiny = parse_tiny(ref)
    if tiny is not None:
        if tiny.name not in TINY_MODELS:
            close = difflib.get_close_matches(tiny.name, list(TINY_MODELS), n=1, cutoff=0.6)
            hint = f' (did you mean "{close[0]}"?)' if close else ""
            raise ValueError(f"unknown tiny model {tiny.name!r}{hint}; available: {', '.join(TINY_MODELS)}")
        return str(tiny)
    path = Path(ref).expanduser()
    local = path if path.is_absolute() else base_dir / path
    if local.is_dir():
        return str(local.resolve())
    if _HUB_ID.match(ref) and not ref.startswith("."):
        return ref
    raise ValueError(f"model directory {ref!r} not found (looked in {local})")
