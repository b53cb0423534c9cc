"""Initial placement of stage replicas on devices.

CPU replicas with ``threads: 0`` share the machine's cores evenly so workers do not
oversubscribe them. The placement is the starting point; the runtime replica table may move
replicas later.
"""
from __future__ import annotations

import os
import re
from collections.abc import Mapping
from omnistage.graph.strict import frozen_dict

from omnistage.errors import ConfigIssue
from omnistage.graph.plan import ReplicaSlot
from omnistage.graph.schema import GraphConfig

_DEVICE = re.compile(r"^(cpu|cuda(:\d+)?|mps)$")


def place(config: GraphConfig, issues: list[ConfigIssue], cores: int | None = None) -> Mapping[str, tuple[ReplicaSlot, ...]]:
    cores = cores or os.cpu_count() or 1
    cpu_replicas = sum(st.resources.replicas for st in config.stages.values() if st.resources.device == "cpu")
    share = max(1, cores // max(1, cpu_replicas))
    out = {}
    for name, st in config.stages.items():
        res = st.resources
        if not _DEVICE.match(res.device):
            issues.append(ConfigIssue(f"stages.{name}.resources.device",
                                      f'got {res.device!r}, expected "cpu", "cuda", "cuda:<n>" or "mps"'))
            continue
        threads = res.threads or (share if res.device == "cpu" else 1)
        out[name] = tuple(ReplicaSlot(name, i, res.device, threads) for i in range(res.replicas))
    return frozen_dict(out)
