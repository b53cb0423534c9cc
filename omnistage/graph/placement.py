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
    if config.elastic is not None and config.elastic.devices:
        return _place_on_pool(config, issues)
    cores = cores or os.cpu_count() or 1
    cpu_replicas = sum(st.resources.initial_replicas * st.resources.tensor_parallel  # (a rank is a process)
                       for st in config.stages.values() if st.resources.device == "cpu")
    share = max(1, cores // max(1, cpu_replicas))
    if config.launcher.kind == "ray" and config.elastic is not None:
        share = config.elastic.threads  # (the pool is the cluster's: a CPU replica is one slot of it)
    out = {}
    for name, st in config.stages.items():
        res = st.resources
        if not _DEVICE.match(res.device):
            issues.append(ConfigIssue(f"stages.{name}.resources.device",
                                      f'got {res.device!r}, expected "cpu", "cuda", "cuda:<n>" or "mps"'))
            continue
        threads = res.threads or (share if res.device == "cpu" else 1)
        groups = [g for g, (_, _, initial) in res.group_ranges().items() for _ in range(initial)]
        out[name] = tuple(ReplicaSlot(name, i, res.device, threads, g) for i, g in enumerate(groups))
    return frozen_dict(out)


def rank_device(device: str, rank: int) -> str:
    """The device of ``rank`` in a replica placed on ``device``."""
    if not device.startswith("cuda"):
        return device
    base = int(device.partition(":")[2] or 0)
    return f"cuda:{base + rank}"


def gpu_device(device: str) -> str | None:
    """The card a placement device names ("cuda" is the current one, cuda:0), None: not a GPU."""
    if not device.startswith("cuda"):
        return None
    return device if ":" in device else "cuda:0"


def matches(device: str, wanted: str) -> bool:
    """A pool device serves a stage asking for ``wanted``: "cpu", "cuda" (any GPU) or exact."""
    return device == wanted or (wanted == "cuda" and device.startswith("cuda:"))


def _place_on_pool(config: GraphConfig, issues: list[ConfigIssue]) -> Mapping[str, tuple[ReplicaSlot, ...]]:
    """Initial replicas take pool devices in stage order; the rest of the pool starts free."""
    assert config.elastic is not None
    free = list(config.elastic.devices)
    for i, device in enumerate(free):
        if not _DEVICE.match(device):
            issues.append(ConfigIssue(f"elastic.devices[{i}]", f'got {device!r}, expected "cpu", "cuda:<n>" or "mps"'))
    out = {}
    for name, st in config.stages.items():
        slots = []
        groups = [g for g, (_, _, initial) in st.resources.group_ranges().items() for _ in range(initial)]
        for i, group in enumerate(groups):
            device = next((d for d in free if matches(d, st.resources.device)), None)
            if device is None:
                issues.append(ConfigIssue(f"stages.{name}.resources", f"the elastic device pool has no free "
                                                                       f"{st.resources.device!r} device for replica {i}"))
                break
            free.remove(device)
            slots.append(ReplicaSlot(name, i, device, config.elastic.threads if device == "cpu" else 1, group))
        out[name] = tuple(slots)
    return frozen_dict(out)


def free_devices(config: GraphConfig, placement: Mapping[str, tuple[ReplicaSlot, ...]]) -> list[str]:
    """Pool devices no initial replica uses."""
    free = list(config.elastic.devices) if config.elastic is not None else []
    for slots in placement.values():
        for slot in slots:
            if slot.device in free:
                free.remove(slot.device)
    return free
