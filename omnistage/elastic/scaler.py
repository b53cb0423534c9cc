"""Runtime replica actions on a running graph: start, drain and stop, switch roles.

- ``add(unit, device)`` launches a replica; routing uses it once it reports Ready.
- ``drain(replica)`` stops routing new requests to it; the requests it holds finish there (none
  is dropped or sent twice); once it holds none it is stopped and leaves the replica table, and
  its device returns to the pool, or goes to the stage waiting for it (a role switch).
- ``move(donor, unit)`` drains the donor's least-loaded replica and starts one of ``unit`` on its
  device; between two modality groups of one stage it only changes the replica's group
  (``regroup``): the same model serves both, so nothing reloads, the requests it holds finish
  there and new ones of its new group reach it at once.
``poll()`` advances drains and reclaims failed starts' devices (a start that is not Ready within
``transport.startup_timeout_s`` is killed and counts as failed); the controller calls it on its
interval. Every action is logged with its reason. Units are stages or "stage/group".

The pool is ``elastic.devices``; on Ray without them it is the cluster's free room, read again on
every poll (``omnistage.elastic.ray_pool``), and a replica is added only where a node has room
for its whole ask.

The scaler acts only through the replica table's methods and the orchestrator's
``start_replica`` / ``stop_replica``.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from omnistage.elastic import ray_pool
from omnistage.elastic.policy import same_stage
from omnistage.graph.placement import free_devices, matches
from omnistage.stages.runtime.orchestrator import Orchestrator
from omnistage.stages.runtime.ray_launcher import RayLauncher
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
        config = orchestrator.plan.config
        launcher = orchestrator.launcher
        self._ray = launcher if isinstance(launcher, RayLauncher) and not (config.elastic and config.elastic.devices) else None
        self._threads = config.elastic.threads if config.elastic is not None else 1
        self._start_timeout = config.transport.startup_timeout_s
        self._kinds = {"cuda" if st.resources.device.startswith("cuda") else st.resources.device
                       for st in config.stages.values()}  # (the devices the graph's stages ask for)
        self.free: list[str] = free_devices(config, orchestrator.plan.placement)
        self.log: list[LoggedAction] = []
        self._handoff: dict[Replica, str] = {}  # draining replica -> unit that gets its device
        self._starting: dict[Replica, float] = {}  # replicas this scaler launched, until Ready or dead: since when
        self._lock = threading.Lock()  # guards ``free``
        self._polling = threading.RLock()  # one poll at a time (a drain's poll may start a replica that polls)
        self.refresh()

    def replicas_of(self, unit: str, state: ReplicaState | None = None) -> list[Replica]:
        """The replicas of a stage, or of one modality group of it ("stage/group")."""
        stage, _, group = unit.partition("/")
        return self.table.of(stage, group or None, state)

    # --- actions ---------------------------------------------------------------------------
    def add(self, unit: str, device: str | None = None, reason: str = "") -> Replica | None:
        """Start a replica of ``unit`` on ``device`` (default: a free pool device that fits)."""
        stage, _, group = unit.partition("/")
        wanted = self.orch.plan.stages[stage].config.resources.device
        handed = device is not None
        if self._ray is not None and wanted.startswith("cuda"):
            wanted = "cuda"  # (Ray picks the GPU)
        with self._lock:
            if device is None:
                device = next((d for d in self.free if matches(d, wanted)), None)
                if device is None:
                    return None
            if device in self.free:
                self.free.remove(device)
        if not self._room_for(stage, device):  # (on Ray: the pool has a slot, but not where the stage may go)
            if handed:
                self.log.append(LoggedAction(time.time(), "failed", stage, -1, device, f"no node has room ({reason})"))
            self.refresh()
            return None
        threads = self._threads if device == "cpu" else 1
        replica = self.orch.start_replica(stage, device, threads, group or None)
        self._starting[replica] = time.monotonic()
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
        """Stop drained replicas (handing their devices on); reclaim devices of failed starts and
        kill starts that overran. Safe to call from several threads: one polls at a time."""
        with self._polling:
            for replica in self.table.take_drained():
                self.orch.stop_replica(replica)
                self._record("stopped", replica, "drained")
                self._release(replica)
            for replica, since in list(self._starting.items()):
                self._check_start(replica, since)
            self.refresh()

    def _check_start(self, replica: Replica, since: float) -> None:
        late = time.monotonic() - since > self._start_timeout
        if late and replica.state is ReplicaState.STARTING:
            replica.runtime.kill()
        if not replica.runtime.is_alive() and self.table.transition(replica, ReplicaState.STARTING, ReplicaState.DEAD):
            why = f"not ready after {self._start_timeout:g} s" if late else "exited during start-up"
            self.table.set_state(replica, ReplicaState.DEAD, error=replica.error or why)
        if replica.state is ReplicaState.STARTING:
            return
        self._starting.pop(replica, None)
        # A failed start: the log keeps why, the table forgets it (only whoever removes it reclaims its
        # device). One that became ready first and then died is the supervisor's (it has an address).
        if replica.state is ReplicaState.DEAD and not replica.address and self.table.remove(replica):
            self._record("failed", replica, replica.error.strip().splitlines()[-1] if replica.error else "")
            self._release(replica)

    def refresh(self) -> None:
        """On Ray without a listed pool: read the pool again from the cluster's free room."""
        if self._ray is None:
            return
        room = self._rooms()
        with self._lock:
            self.free = ray_pool.slots(room, self._kinds, self._threads)

    def _rooms(self) -> list[ray_pool.Room]:
        assert self._ray is not None
        held = [(r.node, self._ray.ask(r.stage, r.device, r.threads)) for r in self.table.all()
                if r.state is not ReplicaState.DEAD]
        return ray_pool.rooms(self._ray.nodes(), held)

    def _room_for(self, stage: str, device: str) -> bool:
        """Whether one node has room for a replica of ``stage`` (always, off Ray or with a listed pool)."""
        if self._ray is None:
            return True
        threads = self._threads if device == "cpu" else 1
        return ray_pool.place(self._rooms(), self._ray.ask(stage, device, threads)) is not None

    def _release(self, replica: Replica) -> None:
        heir = self._handoff.pop(replica, None)
        if heir is not None:
            self.add(heir, replica.device, reason=f"role switch from {replica.name}")
        elif self._ray is None:
            with self._lock:
                self.free.append(replica.device)

    def _record(self, kind: str, replica: Replica, reason: str) -> None:
        self.log.append(LoggedAction(time.time(), kind, replica.stage, replica.index, replica.device, reason))


def _least_loaded(replicas: list[Replica]) -> Replica:
    """The replica holding the fewest requests (the newest of equals: it has warmed up least)."""
    return min(replicas, key=lambda r: (len(r.inflight), -r.index))
