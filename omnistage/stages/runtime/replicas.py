"""The replica table: every stage replica the API process runs, its state, address and load.

One lock (a Condition) guards the table and every Replica in it; each change of state notifies
waiters (``wait_until``). The orchestrator changes it on admission (``pick`` records the
request on the replicas it picked, atomically, so a draining replica can never be stopped
between being picked and being told), on workers' messages and when a process dies; the elastic
scaler adds, drains, regroups and removes replicas through these methods only. A replica that
stops (drained, or a failed start reclaimed) leaves the table; a dead one stays, so that
``/health`` can say why, until someone removes it.
"""
from __future__ import annotations

import enum
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from omnistage.errors import Overloaded


class ReplicaState(enum.Enum):
    STARTING = "starting"  # launched; loading its model, not yet Ready
    READY = "ready"  # takes new requests
    DRAINING = "draining"  # finishes what it holds, takes nothing new, then stops
    DEAD = "dead"  # its process died or failed to start


class ReplicaRuntime(Protocol):
    """What a launcher hands back for one replica: its process (or thread, or actor)."""

    def is_alive(self) -> bool: ...
    def stop(self, timeout: float) -> None: ...
    def kill(self) -> None: ...
    def exit_reason(self) -> str: ...


class Launching:
    """The runtime of a replica listed but not started yet (see ``ReplicaTable.add``)."""

    def is_alive(self) -> bool:
        return True

    def stop(self, timeout: float) -> None:
        pass

    def kill(self) -> None:
        pass

    def exit_reason(self) -> str:
        return "not started"


@dataclass(eq=False)
class Replica:
    stage: str
    index: int  # unique within its stage for the table's lifetime (never reused)
    runtime: ReplicaRuntime
    device: str = "cpu"
    group: str | None = None  # a modality group of its stage (see ResourcesConfig.groups)
    threads: int = 1  # CPU threads it was started with
    address: str = ""  # its inbox, once Ready
    node: str = ""  # the node it runs on, once Ready ("" for this host's launcher)
    state: ReplicaState = ReplicaState.STARTING
    error: str = ""  # why it is dead
    inflight: set[str] = field(default_factory=set)  # requests it holds
    stats: dict[str, float] = field(default_factory=dict)  # its latest Stats

    @property
    def name(self) -> str:
        return f"{self.stage}[{self.index}]"


class ReplicaTable:
    def __init__(self, stages: Iterable[str]) -> None:
        self._cond = threading.Condition()
        self._replicas: dict[str, list[Replica]] = {stage: [] for stage in stages}
        self._next: dict[str, int] = dict.fromkeys(self._replicas, 0)

    # --- reading (snapshots: lists are copies, replicas are live) ----------------------------
    def stages(self) -> list[str]:
        return list(self._replicas)

    def get(self, stage: str, index: int) -> Replica | None:
        with self._cond:
            return next((r for r in self._replicas.get(stage, ()) if r.index == index), None)

    def of(self, stage: str, group: str | None = None, state: ReplicaState | None = None) -> list[Replica]:
        """Replicas of ``stage`` (of one modality group, in one state), oldest first."""
        with self._cond:
            return [r for r in self._replicas[stage]
                    if (group is None or r.group == group) and (state is None or r.state is state)]

    def all(self) -> list[Replica]:
        with self._cond:
            return [r for reps in self._replicas.values() for r in reps]

    def ready_count(self, stage: str, group: str | None = None) -> int:
        return len(self.of(stage, group, ReplicaState.READY))

    def readiness(self) -> dict[str, str | None]:
        """Per stage: None when it has a ready replica, else why not ("loading", "no ready replica")."""
        with self._cond:
            return {stage: _not_ready(reps) for stage, reps in self._replicas.items()}

    # --- changes ------------------------------------------------------------------------------
    def add(self, stage: str, launch: Callable[[int], ReplicaRuntime], device: str = "cpu",
            group: str | None = None, threads: int = 1) -> Replica:
        """List a replica of ``stage`` as starting, then launch it (``launch(index)``, outside the
        lock) and keep its runtime. It is listed first so that its Ready finds it; a launch that
        raises leaves it dead, with the error."""
        with self._cond:
            index = self._next[stage]
            self._next[stage] += 1
            replica = Replica(stage, index, Launching(), device, group, threads)
            self._replicas[stage].append(replica)
            self._cond.notify_all()
        try:
            runtime = launch(index)
        except Exception as exc:
            self.set_state(replica, ReplicaState.DEAD, error=f"could not be launched: {type(exc).__name__}: {exc}")
            raise
        with self._cond:
            replica.runtime = runtime
        return replica

    def set_state(self, replica: Replica, state: ReplicaState, *, address: str | None = None,
                  error: str | None = None, node: str | None = None) -> None:
        with self._cond:
            replica.state = state
            if address is not None:
                replica.address = address
            if node is not None:
                replica.node = node
            if error is not None:
                replica.error = error
            self._cond.notify_all()

    def transition(self, replica: Replica, before: ReplicaState, after: ReplicaState) -> bool:
        """Move ``replica`` from ``before`` to ``after``; False (and no change) if it was not in
        ``before`` (it died meanwhile, say)."""
        with self._cond:
            if replica.state is not before:
                return False
            replica.state = after
            self._cond.notify_all()
            return True

    def set_group(self, replica: Replica, group: str | None) -> None:
        with self._cond:
            replica.group = group
            self._cond.notify_all()

    def remove(self, replica: Replica) -> bool:
        """Take ``replica`` out of the table; False when it was not in it (already removed)."""
        with self._cond:
            listed = replica in self._replicas[replica.stage]
            if listed:
                self._replicas[replica.stage].remove(replica)
                self._cond.notify_all()
            return listed

    def pick(self, stage: str, rid: str, queue_depth: int, at_most: int = 1, group: str | None = None) -> list[Replica]:
        """Up to ``at_most`` ready replicas of ``stage``, least loaded first (at least one), of the
        request's modality group where that group has a ready replica; ``rid`` is recorded on
        each. Raises Overloaded: 503 without a ready replica, 429 when the least loaded one
        already holds ``queue_depth`` requests."""
        with self._cond:
            ready = [r for r in self._replicas[stage] if r.state is ReplicaState.READY]
            ready = [r for r in ready if r.group == group] or ready
            ready.sort(key=lambda r: len(r.inflight))
            if not ready:
                raise Overloaded(f"stage {stage!r} has no live replica", status=503)
            if len(ready[0].inflight) >= queue_depth:
                raise Overloaded(f"stage {stage!r} is at capacity; retry later")
            picked = ready[:max(1, at_most)]
            for replica in picked:
                replica.inflight.add(rid)
            return picked

    def release(self, rid: str, replicas: Iterable[Replica]) -> None:
        """``rid`` no longer held by ``replicas`` (finished there, failed, aborted, let go)."""
        with self._cond:
            for replica in replicas:
                replica.inflight.discard(rid)
            self._cond.notify_all()

    def held(self, replica: Replica) -> list[str]:
        """The requests ``replica`` holds now."""
        with self._cond:
            return list(replica.inflight)

    def take_drained(self) -> list[Replica]:
        """Draining replicas that hold nothing any more, taken out of the table (each is returned
        to exactly one caller, which stops it)."""
        with self._cond:
            drained = [r for reps in self._replicas.values() for r in reps
                       if r.state is ReplicaState.DRAINING and not r.inflight]
            for replica in drained:
                self._replicas[replica.stage].remove(replica)
            if drained:
                self._cond.notify_all()
            return drained

    def wait_until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Block until ``predicate()`` (evaluated under the table's lock) holds, or time out."""
        with self._cond:
            return self._cond.wait_for(predicate, timeout)


def _not_ready(replicas: list[Replica]) -> str | None:
    states = {r.state for r in replicas}
    if ReplicaState.READY in states:
        return None
    if ReplicaState.STARTING in states:
        return "loading"
    dead = [r for r in replicas if r.state is ReplicaState.DEAD]
    if dead:
        last = dead[-1].error.strip().splitlines()[-1:] or ["its process exited"]
        return f"no ready replica ({dead[-1].name} died: {last[0]})"
    return "no ready replica"
