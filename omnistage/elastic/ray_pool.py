"""The elastic device pool of a graph on Ray, read from the cluster.

Under ``launcher: ray``, an ``elastic`` section that lists no ``devices`` takes its pool from
the cluster: every alive node's resources (``ray.nodes()``), less what the graph's live replicas
ask of Ray (``RayLauncher.ask``). The scaler reads it again on every controller interval, so a
node that joins adds to the pool and one that leaves takes its share away.

Slots: each free GPU is one ``cuda`` slot (a GPU replica also asks for one CPU, taken with it);
the CPUs left give ``cpu`` slots of ``elastic.threads`` each. Only the kinds the graph's stages
ask for are counted. A replica whose node is not known yet (starting: Ray has not placed it, or
it has not reported) is counted on the node with most room that fits it, as Ray would place it.
A replica is only added where one node has room for its whole ask: all its ranks, and the
custom resources that pin its stage to a node class.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

Ask = Mapping[str, float]  # Ray resource -> amount ("CPU", "GPU", custom)


@dataclass
class Room:
    node: str
    free: dict[str, float]  # what is left of each resource on the node

    def fits(self, ask: Ask) -> bool:
        return all(self.free.get(key, 0.0) >= amount - 1e-9 for key, amount in ask.items() if amount > 0)

    def take(self, ask: Ask) -> None:
        for key, amount in ask.items():
            self.free[key] = self.free.get(key, 0.0) - amount


def rooms(nodes: Iterable[Mapping], held: Iterable[tuple[str, Ask]]) -> list[Room]:
    """Each alive node's resources less the asks of the replicas ``held`` there ((node id, ask);
    an empty node id: not placed yet)."""
    out = {n["NodeID"]: Room(n["NodeID"], dict(n.get("Resources", {}))) for n in nodes if n.get("Alive")}
    unplaced = []
    for node, ask in held:
        if node in out:
            out[node].take(ask)
        elif not node:
            unplaced.append(ask)
        # (a replica on a node that left holds nothing of the pool any more)
    result = list(out.values())
    for ask in unplaced:
        room = place(result, ask)
        if room is not None:
            room.take(ask)
    return result


def place(rooms: list[Room], ask: Ask) -> Room | None:
    """The node Ray would most likely put ``ask`` on: of those it fits, the one with most CPUs left."""
    fitting = [room for room in rooms if room.fits(ask)]
    return max(fitting, key=lambda room: room.free.get("CPU", 0.0), default=None)


def slots(rooms: Iterable[Room], kinds: set[str], threads: int) -> list[str]:
    """The pool's free slots: ``cuda`` per free GPU (with a CPU each), then ``cpu`` per
    ``threads`` CPUs left; only of the ``kinds`` wanted."""
    gpus = cpus = 0
    for room in rooms:
        left = max(0.0, room.free.get("CPU", 0.0))
        gpu = min(int(max(0.0, room.free.get("GPU", 0.0))), int(left)) if "cuda" in kinds else 0
        gpus += gpu
        cpus += int((left - gpu) // threads) if "cpu" in kinds else 0
    return ["cuda"] * gpus + ["cpu"] * cpus
