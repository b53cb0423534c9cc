"""Model path resolution at compile time: local dirs, generated tiny models, hub ids."""
from __future__ import annotations

import re
from pathlib import Path

from omnistage.errors import ConfigIssue
from omnistage.graph.strict import suggest
from omnistage.models.catalog import TINY_MODELS

TINY_PREFIX = "tiny:"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def resolve_model_path(raw: str, base_dir: Path, where: str, issues: list[ConfigIssue]) -> str | None:
    """Return the path a worker will load, or record why it cannot be loaded.

    ``tiny:<name>`` stays symbolic (the worker generates or reuses the cached checkpoint);
    ``tiny:<name>/<dir>`` names a sub-model directory inside it (``tiny:qwen2.5-omni/thinker``);
    relative paths are taken from the graph file's directory; ``org/name`` that is not a local
    directory is a hub id and is loaded as such where a hub is reachable.
    """
    if raw.startswith(TINY_PREFIX):
        name = raw[len(TINY_PREFIX):].partition("/")[0]  # tiny:<name>[/<sub-model dir>]
        if name not in TINY_MODELS:
            issues.append(ConfigIssue(where, f"unknown tiny model {name!r}{suggest(name, TINY_MODELS)}; "
                                             f"available: {', '.join(TINY_MODELS)}"))
            return None
        return raw
    local = (base_dir / Path(raw).expanduser()) if not Path(raw).expanduser().is_absolute() else Path(raw).expanduser()
    if local.is_dir():
        return str(local.resolve())
    if _HUB_ID.match(raw) and not raw.startswith("."):
        return raw
    issues.append(ConfigIssue(where, f"model directory {raw!r} not found (looked in {local})"))
    return None
