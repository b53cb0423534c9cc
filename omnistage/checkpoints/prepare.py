"""Before serving: fetch or build every checkpoint the graph names that is not on disk yet, one
progress line each on stderr (downloads show the hub client's progress bars), so that a first run shows
what it is waiting for and the stage workers' start-up timeout covers loading only."""
from __future__ import annotations

import sys
import time
from collections.abc import Callable

from omnistage.checkpoints.files import download, local_dir
from omnistage.checkpoints.packaged import ensure_packaged, is_converted, packaged_root, parse_packaged
from omnistage.checkpoints.refs import parse_tiny
from omnistage.graph.plan import GraphPlan
from omnistage.models.catalog import cache_root, is_built
from omnistage.models.tiny import ensure_tiny


def tiny_models(plan: GraphPlan) -> list[str]:
    """The tiny checkpoints the plan's stages load (``tiny:qwen2.5-omni/talker`` -> qwen2.5-omni),
    stand-ins for packaged models included."""
    refs = (parse_tiny(ref) for ref in _resolved(plan))
    return sorted({ref.name for ref in refs if ref is not None})


def _resolved(plan: GraphPlan) -> list[str]:
    return sorted({st.model_path for st in plan.stages.values() if st.model_path is not None})


def prepare_models(plan: GraphPlan) -> None:
    prepare_refs(_resolved(plan))


def prepare_refs(refs: list[str], hub: bool = True) -> None:
    """Build, convert or (``hub``) download each resolved reference that is not on disk yet."""
    tiny = sorted({t.name for t in map(parse_tiny, refs) if t is not None and not is_built(t.name)})
    _each(f"building {len(tiny)} tiny model(s) into {cache_root()} (once)", tiny, ensure_tiny)
    packaged = sorted({p for p in map(parse_packaged, refs) if p is not None and not is_converted(p)})
    _each(f"converting {len(packaged)} packaged model(s) into {packaged_root()} (once)", packaged, ensure_packaged)
    remote = [ref for ref in refs if local_dir(ref) is None] if hub else []
    _each(f"fetching {len(remote)} model(s) from the hub (cached after the first time)", remote, download)


def _each(title: str, names: list[str], make: Callable[[str], object]) -> None:
    if not names:
        return
    print(title, file=sys.stderr, flush=True)
    for i, name in enumerate(names, 1):
        started = time.perf_counter()
        print(f"  [{i}/{len(names)}] {name} ...", file=sys.stderr, flush=True)
        make(name)
        print(f"  [{i}/{len(names)}] {name} done in {time.perf_counter() - started:.1f} s", file=sys.stderr,
              flush=True)
