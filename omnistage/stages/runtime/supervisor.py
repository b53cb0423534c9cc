"""The supervisor: replicas that die are started again, with back-off and a cap per window.

Who owns a replica: the supervisor replaces one that died while READY (the orchestrator's
monitor hands it over) and retries its own replacements that fail to start. A replica that dies
while DRAINING has finished draining: the elastic scaler stops it and reclaims its device. A
replica the scaler starts that fails to start is the scaler's to reclaim. So no replica is ever
restarted twice or both restarted and reclaimed.

The first restart of a stage in a window is immediate; each further one waits ``backoff_s``,
doubling up to ``max_backoff_s``; after ``max_restarts`` within ``window_s`` the next waits
until the oldest leaves the window. The dead replica stays in the table until its restart, its
error saying when that will be (``/health`` shows it).
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from omnistage.graph.schema import SupervisorConfig
from omnistage.stages.runtime.replicas import Launching, Replica, ReplicaState, ReplicaTable

log = logging.getLogger("omnistage.supervisor")
StartReplica = Callable[[str, str, int, "str | None"], Replica]  # (stage, device, threads, group)


@dataclass(frozen=True)
class Restart:
    time: float  # unix time of the restart
    stage: str
    replica: int  # the dead replica's index
    new_replica: int
    reason: str  # why the dead one died


class Supervisor:
    def __init__(self, table: ReplicaTable, start: StartReplica, config: SupervisorConfig,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.table, self.config, self._start, self._clock = table, config, start, clock
        self.log: list[Restart] = []
        self._due: list[tuple[float, Replica]] = []  # (when, dead replica) restarts waiting their time
        self._starting: set[Replica] = set()  # replacements that have not reported Ready yet
        self._history: dict[str, list[float]] = {}  # stage -> times of its recent restarts
        self._claimed: set[Replica] = set()  # dead replicas taken out of the table, not yet replaced
        self._lock = threading.Lock()

    def replace(self, dead: Replica) -> None:
        """``dead`` died while serving (or is a replacement that failed to start): start another
        of its stage, device, group and threads when the back-off allows."""
        if not self.config.enabled:
            return
        now = self._clock()
        with self._lock:
            self._starting.discard(dead)
            if any(r is dead for _, r in self._due):
                return  # (a replacement that died before the supervisor saw it Ready is reported twice)
            when = self._next_time(dead.stage, now)
            self._due.append((when, dead))
        error = dead.error.rsplit("; restarting", 1)[0].strip()
        cause = error.splitlines()[-1] if error else "its process exited"
        wait = f"in {when - now:.1f} s" if when > now else "now"
        self.table.set_state(dead, ReplicaState.DEAD, error=f"{cause}; restarting {wait}")
        log.warning("stage %r replica %d died (%s); restarting %s", dead.stage, dead.index, cause, wait)

    def _next_time(self, stage: str, now: float) -> float:
        recent = [t for t in self._history.get(stage, []) if now - t < self.config.window_s]
        recent += [when for when, r in self._due if r.stage == stage]  # already scheduled ones count
        recent.sort()
        if len(recent) >= self.config.max_restarts:
            return max(now, recent[-self.config.max_restarts] + self.config.window_s)
        if not recent:
            return now
        return now + min(self.config.max_backoff_s, self.config.backoff_s * 2 ** (len(recent) - 1))

    def poll(self) -> None:
        """Run every monitor period: replacements that failed to start are scheduled again; restarts
        whose time has come are launched."""
        with self._lock:
            starting = list(self._starting)
        for replica in starting:
            if replica.state is ReplicaState.STARTING and not replica.runtime.is_alive():
                self.table.transition(replica, ReplicaState.STARTING, ReplicaState.DEAD)
            if replica.state is ReplicaState.DEAD:
                self.replace(replica)
            elif replica.state is not ReplicaState.STARTING:
                with self._lock:
                    self._starting.discard(replica)
        now = self._clock()
        with self._lock:
            due = [r for when, r in self._due if when <= now]
            self._due = [(when, r) for when, r in self._due if when > now]
            for dead in due:
                self._history.setdefault(dead.stage, []).append(now)
        for dead in due:
            self._restart(dead)

    def _restart(self, dead: Replica) -> None:
        # Claimed by taking it out of the table: whoever removes a replica owns it (the scaler
        # reclaims only replicas that never became ready), so it is never restarted twice.
        if dead not in self._claimed and not self.table.remove(dead):
            return  # someone else took it out of the table (the pipeline is closing)
        self._claimed.add(dead)
        reason = dead.error.rsplit("; restarting", 1)[0].strip()
        try:
            new = self._start(dead.stage, dead.device, dead.threads, dead.group)
        except (OSError, RuntimeError) as exc:  # the process could not be started: retried with back-off
            for failed in self.table.of(dead.stage, state=ReplicaState.DEAD):  # the launch's own listing
                if isinstance(failed.runtime, Launching):
                    self.table.remove(failed)
            dead.error = f"{reason}; a restart failed: {exc}"
            self.replace(dead)
            return
        self._claimed.discard(dead)
        with self._lock:
            self._starting.add(new)
        self.log.append(Restart(time.time(), dead.stage, dead.index, new.index, reason))
        log.warning("stage %r: replica %d started in place of replica %d (%s)", dead.stage, new.index, dead.index,
                    reason)

    def pending(self) -> int:
        """Restarts scheduled or starting."""
        with self._lock:
            return len(self._due) + len(self._starting)
