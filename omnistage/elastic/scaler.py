"""Runtime replica actions on a running orchestrator: start, drain and stop, switch roles.

- ``add(stage, device)`` launches a replica; routing uses it once it reports Ready.
- ``drain(replica)`` stops routing new requests to it; the requests it holds finish there (none
  is dropped or sent twice); once it holds none it gets Shutdown, its process ends and its device
  returns to the pool, or goes to the stage waiting for it (a role switch).
- ``move(donor, stage)`` drains the donor's least-loaded replica and starts one of ``stage`` on
  its device; between two modality groups of one stage it only changes the replica's group
  (``regroup``): the same model serves both, so nothing reloads, the requests it holds finish
  there and new ones of its new group reach it at once.
``poll()`` advances drains and returns failed starts' devices; the controller calls it on its
interval. Every action is logged with its reason.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from omnistage.connectors.messages import Shutdown
from omnistage.elastic.policy import same_stage
from omnistage.graph.placement import free_devices, matches
from omnistage.stages.runtime.launcher import launch
from omnistage.stages.worker.loop import WorkerSpec

if TYPE_CHECKING:
    from omnistage.stages.runtime.orchestrator import Orchestrator, Replica


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
        self.free: list[str] = free_devices(orchestrator.plan.config, orchestrator.plan.placement)
        self.log: list[LoggedAction] = []
        self._handoff: dict[tuple[str, int], str] = {}  # draining replica -> stage that gets its device
        self._starting: set[tuple[str, int]] = set()
        self._lock = threading.Lock()

    # --- actions ---------------------------------------------------------------------------
    def replicas_of(self, unit: str) -> list[Replica]:
        """The replicas of a stage, or of one modality group of it ("stage/group")."""
        stage, _, group = unit.partition("/")
        return [r for r in self.orch.replicas[stage] if not group or r.group == group]

    def add(self, unit: str, device: str | None = None, reason: str = "") -> Replica | None:
        """Start a replica of ``unit`` (a stage or "stage/group") on ``device`` (default: a free
        pool device that fits)."""
        from omnistage.stages.runtime.orchestrator import Replica
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
        with self.orch._lock:
            index = len(self.orch.replicas[stage])
            spec = WorkerSpec(self.orch.plan, stage, index, device, threads, self.orch.session, self.orch.run_dir,
                              self.orch._sink.address, self.orch.in_process)
            replica = Replica(stage, index, launch(spec), device=device, group=group or None)
            self.orch.replicas[stage].append(replica)
        self._starting.add((stage, index))
        self._record("add", replica, reason)
        return replica

    def drain(self, replica: Replica, then: str | None = None, reason: str = "") -> None:
        """Route nothing new to ``replica``; stop it once empty; its device then goes to ``then``."""
        with self.orch._lock:
            if replica.state != "ready":
                return
            replica.state = "draining"
        if then is not None:
            self._handoff[(replica.stage, replica.index)] = then
        self._record("drain", replica, reason)
        self.poll()

    def move(self, donor: str, stage: str, reason: str = "") -> bool:
        """Drain one replica of ``donor`` and start one of ``stage`` (stages or "stage/group")."""
        if same_stage(donor, stage):
            return self.regroup(donor, stage, reason)
        with self.orch._lock:
            ready = [r for r in self.replicas_of(donor) if r.state == "ready"]
            others = [r for r in self.orch.replicas[donor.partition("/")[0]] if r.state == "ready"]
        if not ready or len(others) <= 1:
            return False  # never drain a stage's last ready replica
        victim = min(ready, key=lambda r: (len(r.inflight), -r.index))
        self._record("move", victim, f"{donor} -> {stage}: {reason}")
        self.drain(victim, then=stage, reason=reason)
        return True

    def regroup(self, donor: str, unit: str, reason: str = "") -> bool:
        """Hand the least-loaded ready replica of group ``donor`` to group ``unit`` of the same stage."""
        with self.orch._lock:
            ready = [r for r in self.replicas_of(donor) if r.state == "ready"]
            if not ready:
                return False
            replica = min(ready, key=lambda r: (len(r.inflight), -r.index))
            replica.group = unit.partition("/")[2]
        self._record("regroup", replica, f"{donor} -> {unit}: {reason}")
        return True

    # --- progress --------------------------------------------------------------------------
    def poll(self) -> None:
        """Stop drained replicas (handing their devices on); reclaim devices of failed starts."""
        with self.orch._lock:
            drained = [r for reps in self.orch.replicas.values() for r in reps
                       if r.state == "draining" and not r.inflight]
            for replica in drained:
                replica.state = "stopped"
            for reps in self.orch.replicas.values():
                for r in reps:  # a start that crashed before it could say so
                    if r.state == "starting" and (r.stage, r.index) in self._starting and not r.runtime.is_alive():
                        r.state, r.error = "dead", r.error or "exited during start-up"
            failed = [r for reps in self.orch.replicas.values() for r in reps
                      if (r.stage, r.index) in self._starting and r.state in ("ready", "dead")]
        for replica in drained:
            self.orch._out.put((replica.address, Shutdown()))
            threading.Thread(target=replica.runtime.stop, args=(30,), daemon=True).start()
            self._record("stopped", replica, "drained")
            self._release(replica)
        for replica in failed:
            self._starting.discard((replica.stage, replica.index))
            if replica.state == "dead":
                self._record("failed", replica, replica.error.strip().splitlines()[-1] if replica.error else "")
                self._release(replica)
        if drained or failed:
            with self.orch._lock:  # states and devices changed: wake Orchestrator.wait_until
                self.orch._lock.notify_all()

    def _release(self, replica: Replica) -> None:
        heir = self._handoff.pop((replica.stage, replica.index), None)  # a stage or "stage/group"
        if heir is not None:
            self.add(heir, replica.device, reason=f"role switch from {replica.stage}[{replica.index}]")
        else:
            with self._lock:
                self.free.append(replica.device)

    def _record(self, kind: str, replica: Replica, reason: str) -> None:
        self.log.append(LoggedAction(time.time(), kind, replica.stage, replica.index, replica.device, reason))
