"""Runtime replica actions on a running graph: start, drain and stop, switch roles.

- ``add(unit, device)`` launches a replica; routing uses it once it reports Ready.
- ``drain(replica)`` stops routing new requests to it; the requests it holds finish there (none
  is dropped or sent twice); once it holds none it is stopped and leaves the replica table, and
  its device returns to the pool, or goes to the stage waiting for it (a role switch).
- ``move(donor, unit)`` drains the donor's least-loaded replica and starts one of ``unit`` on its
  device; between two modality groups of one stage it only changes the replica's group
  (``regroup``): the same model serves both, so nothing reloads, the requests it holds finish
  there and new ones of its new group reach it at once.
``poll()`` advances drains and reclaims failed starts' devices; the controller calls it on its
interval. Every action is logged with its reason. Units are stages or "stage/group".

The scaler acts only through the replica table's methods and the orchestrator's
``start_replica`` / ``stop_replica``.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from omnistage.elastic.policy import same_stage
from omnistage.graph.placement import free_devices, matches
from omnistage.stages.runtime.orchestrator import Orchestrator
from omnistage.stages.runtime.replicas import Replica, ReplicaState


@dataclass(frozen=True)
class LoggedAction:
    time: float
    kind: str  # add | drain | stopped | move | regroup | failed
    stage: str
    replica: int
    device: str
    reason: str


class Scaler:
    def __init__(self, orchestrator: Orchestrator) -> None:
        self.orch = orchestrator
        self.table = orchestrator.table
        self.free: list[str] = free_devices(orchestrator.plan.config, orchestrator.plan.placement)
        self.log: list[LoggedAction] = []
        self._handoff: dict[Replica, str] = {}  # draining replica -> unit that gets its device
        self._starting: set[Replica] = set()  # replicas this scaler launched, until Ready or dead
        self._lock = threading.Lock()  # guards ``free``

    def replicas_of(self, unit: str, state: ReplicaState | None = None) -> list[Replica]:
        """The replicas of a stage, or of one modality group of it ("stage/group")."""
        stage, _, group = unit.partition("/")
        return self.table.of(stage, group or None, state)

    # --- actions ---------------------------------------------------------------------------
    def add(self, unit: str, device: str | None = None, reason: str = "") -> Replica | None:
        """Start a replica of ``unit`` on ``device`` (default: a free pool device that fits)."""
        stage, _, group = unit.partition("/")
        wanted = self.orch.plan.stages[stage].config.resources.device
        with self._lock:
            if device is None:
                device = next((d for d in self.free if matches(d, wanted)), None)
                if device is None:
                    return None
            if device in self.free:
                self.free.remove(device)
        elastic = self.orch.plan.config.elastic
        threads = elastic.threads if elastic is not None and device == "cpu" else 1
        replica = self.orch.start_replica(stage, device, threads, group or None)
        self._starting.add(replica)
        self._record("add", replica, reason)
        return replica

    def drain(self, replica: Replica, then: str | None = None, reason: str = "") -> None:
        """Route nothing new to ``replica``; stop it once empty; its device then goes to ``then``."""
        if not self.table.transition(replica, ReplicaState.READY, ReplicaState.DRAINING):
            return
        if then is not None:
            self._handoff[replica] = then
        self._record("drain", replica, reason)
        self.poll()

    def move(self, donor: str, unit: str, reason: str = "") -> bool:
        """Drain one replica of ``donor`` and start one of ``unit``."""
        if same_stage(donor, unit):
            return self.regroup(donor, unit, reason)
        ready = self.replicas_of(donor, ReplicaState.READY)
        if not ready or self.table.ready_count(donor.partition("/")[0]) <= 1:
            return False  # never drain a stage's last ready replica
        victim = _least_loaded(ready)
        self._record("move", victim, f"{donor} -> {unit}: {reason}")
        self.drain(victim, then=unit, reason=reason)
        return True

    def regroup(self, donor: str, unit: str, reason: str = "") -> bool:
        """Hand the least-loaded ready replica of group ``donor`` to group ``unit`` of the same stage."""
        ready = self.replicas_of(donor, ReplicaState.READY)
        if not ready:
            return False
        replica = _least_loaded(ready)
        self.table.set_group(replica, unit.partition("/")[2])
        self._record("regroup", replica, f"{donor} -> {unit}: {reason}")
        return True

    def remove(self, unit: str, reason: str = "") -> bool:
        """Drain the least-loaded ready replica of ``unit``, unless it is its stage's last."""
        ready = self.replicas_of(unit, ReplicaState.READY)
        if not ready or self.table.ready_count(unit.partition("/")[0]) <= 1:
            return False
        self.drain(_least_loaded(ready), reason=reason)
        return True

    # --- progress --------------------------------------------------------------------------
    def poll(self) -> None:
        """Stop drained replicas (handing their devices on); reclaim devices of failed starts.
        Safe to call from several threads: each replica is handled by the one that takes it."""
        for replica in self.table.take_drained():
            self.orch.stop_replica(replica)
            self._record("stopped", replica, "drained")
            self._release(replica)
        for replica in list(self._starting):
            if not replica.runtime.is_alive() and self.table.transition(replica, ReplicaState.STARTING,
                                                                        ReplicaState.DEAD):
                self.table.set_state(replica, ReplicaState.DEAD, error=replica.error or "exited during start-up")
            if replica.state is ReplicaState.STARTING:
                continue
            self._starting.discard(replica)
            # A failed start: the log keeps why, the table forgets it (only whoever removes it reclaims its
            # device). One that became ready first and then died is the supervisor's (it has an address).
            if replica.state is ReplicaState.DEAD and not replica.address and self.table.remove(replica):
                self._record("failed", replica, replica.error.strip().splitlines()[-1] if replica.error else "")
                self._release(replica)

    def _release(self, replica: Replica) -> None:
        heir = self._handoff.pop(replica, None)
        if heir is not None:
            self.add(heir, replica.device, reason=f"role switch from {replica.name}")
        else:
            with self._lock:
                self.free.append(replica.device)

    def _record(self, kind: str, replica: Replica, reason: str) -> None:
        self.log.append(LoggedAction(time.time(), kind, replica.stage, replica.index, replica.device, reason))


def _least_loaded(replicas: list[Replica]) -> Replica:
    """The replica holding the fewest requests (the newest of equals: it has warmed up least)."""
    return min(replicas, key=lambda r: (len(r.inflight), -r.index))
