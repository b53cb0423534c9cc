"""Before serving: build the graph's tiny checkpoints that are not cached yet, one progress line
each, so that a first run on a fresh machine shows what it is waiting for (workers would
otherwise build them silently inside their start-up timeout)."""
from __future__ import annotations

import time

from omnistage.checkpoints.refs import parse_tiny
from omnistage.graph.plan import GraphPlan
from omnistage.models.tiny import cache_root, ensure_tiny, is_built


def tiny_models(plan: GraphPlan) -> list[str]:
    """The tiny checkpoints the plan's models name (``tiny:qwen2.5-omni/talker`` -> qwen2.5-omni)."""
    refs = (parse_tiny(m.path) for m in plan.config.models.values())
    return sorted({ref.name for ref in refs if ref is not None})


def prepare_models(plan: GraphPlan) -> None:
    missing = [name for name in tiny_models(plan) if not is_built(name)]
    if not missing:
        return
    print(f"building {len(missing)} tiny model(s) into {cache_root()} (once)", flush=True)
    for i, name in enumerate(missing, 1):
        started = time.perf_counter()
        print(f"  [{i}/{len(missing)}] {name} ...", end="", flush=True)
        ensure_tiny(name)
        print(f" done in {time.perf_counter() - started:.1f} s", flush=True)
