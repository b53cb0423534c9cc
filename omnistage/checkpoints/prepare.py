"""Before serving: fetch or build every checkpoint the graph names that is not on disk yet, one
progress line each (downloads show the hub client's progress bars), so that a first run shows
what it is waiting for and the stage workers' start-up timeout covers loading only."""
from __future__ import annotations

import time
from collections.abc import Callable

from omnistage.checkpoints.files import download, local_dir
from omnistage.checkpoints.packaged import ensure_packaged, is_converted, packaged_root, parse_packaged
from omnistage.checkpoints.refs import parse_tiny
from omnistage.graph.plan import GraphPlan
from omnistage.models.tiny import cache_root, ensure_tiny, is_built


def tiny_models(plan: GraphPlan) -> list[str]:
    """The tiny checkpoints the plan's models name (``tiny:qwen2.5-omni/talker`` -> qwen2.5-omni)."""
    refs = (parse_tiny(m.path) for m in plan.config.models.values())
    return sorted({ref.name for ref in refs if ref is not None})


def _resolved(plan: GraphPlan) -> list[str]:
    return sorted({st.model_path for st in plan.stages.values() if st.model_path is not None})


def prepare_models(plan: GraphPlan) -> None:
    missing = [name for name in tiny_models(plan) if not is_built(name)]
    _each(f"building {len(missing)} tiny model(s) into {cache_root()} (once)", missing, ensure_tiny)
    packaged = sorted({p for p in map(parse_packaged, _resolved(plan)) if p is not None and not is_converted(p)})
    _each(f"converting {len(packaged)} packaged model(s) into {packaged_root()} (once)", packaged, ensure_packaged)
    hub = [ref for ref in _resolved(plan) if local_dir(ref) is None]
    _each(f"fetching {len(hub)} model(s) from the hub (cached after the first time)", hub, download)


def _each(title: str, names: list[str], make: Callable[[str], object]) -> None:
    if not names:
        return
    print(title, flush=True)
    for i, name in enumerate(names, 1):
        started = time.perf_counter()
        print(f"  [{i}/{len(names)}] {name} ...", flush=True)
        make(name)
        print(f"  [{i}/{len(names)}] {name} done in {time.perf_counter() - started:.1f} s", flush=True)
