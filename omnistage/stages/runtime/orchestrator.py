"""Admission, routing and result collection for a running graph.

The orchestrator starts the graph's replicas through its launcher, picks replicas from the
replica table for each admitted request, sends each one its part of the route, feeds the entry
stages, and turns what comes back to its sink into the request's events. Stage-to-stage data
never passes through here. A replica whose process dies fails its in-flight requests with
StageDeadError within one monitor period.
"""
from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import zmq

from omnistage.connectors.messages import (Abort, Chunks, Done, Failed, Probe, ProbeResult, Ready, Shutdown,
                                           StartFailed, Stats)
from omnistage.connectors.shm import ShmRing, remove_segment, remove_segments, segment_name
from omnistage.connectors.mailer import Mailer
from omnistage.connectors.transport import Inbox, Peers, bind_address
from omnistage.connectors.wire import Decoder, Unreadable, unsendable
from omnistage.errors import Overloaded, RequestFailed, RequestRejected, StageDeadError, StageStartError
from omnistage.graph.plan import REQUEST, GraphPlan, Route
from omnistage.stages.runtime.admission import (admission_messages, images_by_reference, probe_target, resolve_params,
                                                split, without_stage)
from omnistage.stages.runtime.handle import ChunkEvent, DoneEvent, ErrorEvent, RequestHandle
from omnistage.stages.runtime.launcher import LocalLauncher
from omnistage.stages.runtime.goodput import Goodput
from omnistage.stages.runtime.ray_launcher import RayLauncher, connect, cpus_asked
from omnistage.stages.runtime.replicas import Replica, ReplicaState, ReplicaTable
from omnistage.stages.runtime.shedding import Shedder
from omnistage.stages.runtime.supervisor import Supervisor

MONITOR_PERIOD_S = 0.1
log = logging.getLogger("omnistage.orchestrator")
SHUTDOWN_WAIT_S = 30  # a replica stopped while running (drained): its Shutdown is behind its work
CLOSE_WAIT_S = 10  # closing the pipeline: every replica's clean exit, together; then terminate, kill


@dataclass
class _Live:
    handle: RequestHandle
    route: Route
    chosen: dict[str, list[Replica]]  # stage -> the replicas taking part
    inputs: dict[str, Any]
    params: dict[str, Any]
    pending: set[tuple[str, int]] = field(default_factory=set)  # (stage, replica) yet to report Done
    probing: tuple[str, str] | None = None  # (encode stage, AR stage) while a probe is out
    meta: dict[str, dict[str, Any]] = field(default_factory=dict)
    group: str = "text"  # modality group: arrivals and completions count in it
    queued: set[str] = field(default_factory=set)  # stages that shed where it found no free batch slot

    @property
    def replicas(self) -> list[Replica]:
        return [r for reps in self.chosen.values() for r in reps]


class Orchestrator:
    def __init__(self, plan: GraphPlan, in_process: bool = False,
                 gpu_shares: Mapping[tuple[str, str], float] | None = None) -> None:
        """``gpu_shares``: (stage, card) -> the share of the card its processes there are capped at."""
        self.plan = plan
        self.session = uuid.uuid4().hex[:10]
        self.run_dir = tempfile.mkdtemp(prefix=f"omnistage-{self.session}-")
        transport = plan.config.transport
        on_ray = not in_process and plan.config.launcher.kind == "ray"
        started_ray, self.node, host = connect(plan.config.launcher, cpus_asked(plan)) if on_ray else (False, "", transport.host)
        self._ctx = zmq.Context()
        self._ring = (ShmRing(segment_name(self.session, "api"), transport.shm_slots, transport.shm_slot_mb << 20)
                      if transport.shm else None)
        self._sink = Inbox(self._ctx, bind_address("tcp" if on_ray else transport.protocol, host, self.run_dir, "sink"),
                           Decoder(), transport.high_water_mark)
        self._peers = Peers(self.node, self._ring, transport.shm_threshold_kb << 10)
        self._mail = Mailer(self._ctx, self._peers.encoder, transport.high_water_mark, on_unsent=self._unsent)
        self._lock = threading.Lock()  # guards ``requests`` and the counters
        self._stopping = threading.Event()
        self.table = ReplicaTable(plan.order)
        self.launcher: LocalLauncher | RayLauncher = (
            RayLauncher(plan, self.session, self.run_dir, self._sink.address, self.node, started_ray) if on_ray
            else LocalLauncher(plan, self.session, self.run_dir, self._sink.address, in_process, gpu_shares))
        self.supervisor = Supervisor(self.table, self.start_replica, plan.config.supervisor)
        self.requests: dict[str, _Live] = {}
        self.infos: dict[str, dict[str, Any]] = {}  # stage -> the model facts its replicas reported
        # Requests admitted to and completed by each elastic unit (read by the elastic controller).
        self.arrivals: dict[str, int] = dict.fromkeys(plan.units(), 0)
        self.completions: dict[str, int] = dict.fromkeys(plan.units(), 0)
        self.goodput = Goodput(plan)  # requests within their SLO, per unit
        self.shedder = Shedder(plan, self.goodput)  # refuses requests that would queue past their SLO
        self._threads: list[threading.Thread] = []
        self._monitor_thread: threading.Thread | None = None
        self.broken = ""  # why the orchestrator cannot serve (one of its threads died), or ""
        self.internal_errors = 0  # messages from workers this process failed to handle

    # --- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        self._spawn(self._receive)
        for stage in self.plan.order:
            for slot in self.plan.placement[stage]:
                self.start_replica(stage, slot.device, slot.threads, slot.group)
        try:
            self._wait_ready(self.plan.config.transport.startup_timeout_s)
        except BaseException:
            self.close()
            raise
        self._monitor_thread = self._spawn(self._monitor)

    def _spawn(self, target: Any) -> threading.Thread:
        """Run ``target`` in a thread that, should it ever die, says so: the orchestrator is then
        broken (``/health`` 503 with the reason, new requests 503) and what it holds fails."""
        def supervised() -> None:
            try:
                target()
            except BaseException as exc:
                log.critical("orchestrator thread %s died", target.__name__, exc_info=exc)
                self.broken = f"the orchestrator's {target.__name__.strip('_')} thread died: {type(exc).__name__}: {exc}"
                with self._lock:
                    live = list(self.requests)
                for rid in live:
                    self._fail(rid, RequestFailed(self.broken), notify_stages=False)
                raise
        thread = threading.Thread(target=supervised, name=f"orchestrator{target.__name__}", daemon=True)
        thread.start()
        self._threads.append(thread)
        return thread

    def start_replica(self, stage: str, device: str, threads: int, group: str | None = None) -> Replica:
        """Launch a replica; it takes requests once it reports Ready."""
        return self.launcher.start(self.table, stage, device, threads, group)

    def stop_replica(self, replica: Replica) -> None:
        """Tell a replica to exit, take it out of the table (if still there) and reap its process
        in the background."""
        self._tell_to_exit(replica)
        self.table.remove(replica)
        threading.Thread(target=replica.runtime.stop, args=(SHUTDOWN_WAIT_S,), daemon=True).start()

    def _tell_to_exit(self, replica: Replica) -> None:
        if replica.address and replica.state in (ReplicaState.READY, ReplicaState.DRAINING):
            self._mail.put(replica.address, Shutdown())

    def _wait_ready(self, timeout: float) -> None:
        def settled() -> bool:
            return all(r.state is not ReplicaState.STARTING or not r.runtime.is_alive() for r in self.table.all())
        if not self.table.wait_until(settled, timeout):
            late = [r.name for r in self.table.all() if r.state is ReplicaState.STARTING]
            raise StageStartError(f"stages not ready after {timeout:.0f} s: {', '.join(late)}")
        broken = [r for r in self.table.all() if r.state is not ReplicaState.READY]
        if broken:
            details = "\n".join(f"stage {r.stage!r} replica {r.index}: {r.error or 'exited during start-up'}"
                                for r in broken)
            raise StageStartError(f"stage workers failed to start:\n{details}")

    def close(self) -> None:
        """Stop every worker, fail what is still running, release sockets and shared memory."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        if self._monitor_thread is not None:  # it may be starting a replacement: let it finish first
            self._monitor_thread.join(5)
        replicas = self.table.all()
        for replica in replicas:
            self._tell_to_exit(replica)
        deadline = time.monotonic() + CLOSE_WAIT_S  # one deadline for all: closing is bounded
        for replica in replicas:
            replica.runtime.stop(timeout=max(0.0, deadline - time.monotonic()))
            self.table.remove(replica)
        with self._lock:
            live = list(self.requests)
        for rid in live:
            self._fail(rid, RequestFailed("the pipeline was shut down"), notify_stages=False)
        for thread in self._threads:
            thread.join(5)
        self._mail.close()
        self._sink.close()
        if self._ring is not None:
            self._ring.close()
        self._ctx.term()
        remove_segments(self.session)
        shutil.rmtree(self.run_dir, ignore_errors=True)
        self.launcher.close()

    # --- requests -------------------------------------------------------------------------
    def submit(self, inputs: Mapping[str, Any], params: Mapping[str, Any] | None = None,
               modalities: set[str] | None = None, loop: asyncio.AbstractEventLoop | None = None) -> RequestHandle:
        """Admit a request; raises RequestRejected (bad route or parameter) or Overloaded (no capacity)."""
        if self._stopping.is_set():
            raise Overloaded("the pipeline is shutting down", status=503)
        if self.broken:
            raise Overloaded(self.broken, status=503)
        inputs = {k: v for k, v in inputs.items() if v is not None}
        _check_sendable(inputs)
        route = self.plan.route_for(frozenset(inputs), None if modalities is None else frozenset(modalities))
        params = resolve_params(self.plan, route, self.infos, params or {})
        _check_sendable(params)
        rid = uuid.uuid4().hex
        handle = RequestHandle(rid, loop, params)
        target = probe_target(self.plan, route, inputs)
        refs = None
        if target is not None and (by_ref := images_by_reference(self.plan, route, target[1], inputs["images"])):
            inputs["images"], refs = by_ref
        group = request_group(inputs)
        live = _Live(handle, route, {}, inputs, params, probing=target, group=group)
        # Listed before its replicas are picked: a replica that dies once it holds the request
        # finds it and fails it (it never waits on a dead replica).
        with self._lock:
            self.requests[rid] = live
        try:
            chosen = self._pick(rid, route, target, len(inputs.get("images") or ()), group, live.queued)
        except Overloaded:
            with self._lock:
                self.requests.pop(rid, None)
            self.goodput.failed(route.stages, group)  # (refused for want of capacity: it misses its SLO)
            raise
        with self._lock:
            admitted = self.requests.get(rid) is live
            if admitted:
                live.chosen = chosen
                for stage in route.stages:
                    self.arrivals[self.plan.unit(stage, group)] += 1
        if not admitted:  # failed while its replicas were picked (one died): the handle has the error
            self.table.release(rid, [r for reps in chosen.values() for r in reps])
            return handle
        if target is None:
            self._launch(rid, live, route)
        else:  # unified prefix cache: ask the AR stage what it already holds before encoding
            ar = target[1]
            fields = {e.src_port: inputs[e.src_port] for e in route.edges if e.src_stage == REQUEST and e.dst_stage == ar
                      and not (refs is not None and e.src_port == "images")}
            self._mail.put(chosen[ar][0].address, Probe(rid, fields, live.params, self._sink.address, refs))
        return handle

    def _pick(self, rid: str, route: Route, target: tuple[str, str] | None, images: int,
              group: str, queued: set[str]) -> dict[str, list[Replica]]:
        """A replica of every stage on the route (several encoders when the images may be split
        across them); none is held if any stage has no capacity or sheds the request. The
        stages that shed where it will wait for a batch slot are added to ``queued``."""
        chosen: dict[str, list[Replica]] = {}
        try:
            for stage in route.stages:
                at_most = images if target is not None and stage == target[0] else 1
                depth = self.plan.stages[stage].config.batching.queue_depth
                chosen[stage] = self.table.pick(stage, rid, depth, at_most, group)
                first = chosen[stage][0]
                ahead = len(self.table.held(first)) - 1
                if self.shedder.sheds(stage) and self.shedder.admit(stage, group, first, ahead):
                    queued.add(stage)
        except Overloaded:
            self.table.release(rid, [r for reps in chosen.values() for r in reps])
            raise
        return chosen

    def _launch(self, rid: str, live: _Live, route: Route, have_inputs: str | None = None,
                image_groups: dict[str, list[list[int]]] | None = None) -> None:
        """Send the request's Admits and inputs; replicas not on ``route`` are let go."""
        let_go: list[Replica] = []
        with self._lock:
            for stage in list(live.chosen):
                if stage not in route.stages:
                    keep = []
                elif image_groups and stage in image_groups:
                    keep = live.chosen[stage][:len(image_groups[stage])]
                else:
                    keep = live.chosen[stage]
                let_go += live.chosen[stage][len(keep):]
                live.chosen[stage] = keep
            live.route = route
            live.pending = {(r.stage, r.index) for r in live.replicas}
        self.table.release(rid, let_go)
        for address, msg in admission_messages(rid, route, live.chosen, live.inputs, live.params, self._sink.address,
                                               have_inputs, image_groups):
            self._mail.put(address, msg)

    def _on_probe(self, msg: ProbeResult) -> None:
        live = self.requests.get(msg.rid)
        if live is None or live.probing is None:
            return
        if msg.error:
            self._fail(msg.rid, _error(msg.error, msg.status, msg.stage))
            return
        encode, ar = live.probing
        live.probing = None
        uncovered = [i for i in range(len(live.inputs["images"])) if i not in set(msg.covered)]
        if not uncovered:
            self._launch(msg.rid, live, without_stage(live.route, encode), have_inputs=ar)
        else:
            groups = split(uncovered, len(live.chosen[encode]))
            self._launch(msg.rid, live, live.route, have_inputs=ar, image_groups={encode: groups})

    def abort(self, rid: str) -> None:
        """Stop a request in every stage (e.g. its client went away). No further events."""
        live = self._release(rid, notify_stages=True)
        if live is not None:
            live.handle.closed = True

    def _fail(self, rid: str, error: RequestFailed | RequestRejected, notify_stages: bool = True) -> None:
        live = self._release(rid, notify_stages)
        if live is not None:
            live.handle.push(ErrorEvent(error))
            if not isinstance(error, RequestRejected):  # (a request a stage refused was the client's mistake)
                self.goodput.failed(live.route.stages, live.group)

    def _release(self, rid: str, notify_stages: bool) -> _Live | None:
        """Forget a running request; with ``notify_stages`` tell its live replicas to drop it."""
        with self._lock:
            live = self.requests.pop(rid, None)
        if live is None:
            return None
        self.table.release(rid, live.replicas)
        if notify_stages:
            for replica in live.replicas:
                if replica.state is ReplicaState.READY:
                    self._mail.put(replica.address, Abort(rid))
        return live

    # --- threads --------------------------------------------------------------------------
    def _receive(self) -> None:
        while not self._stopping.is_set():
            try:
                try:
                    msg = self._sink.recv(timeout_ms=50)
                except Unreadable as lost:  # (a value of it could not be brought in: its requests fail)
                    self.internal_errors += 1
                    log.error("could not read a message from a stage worker: %s", lost)
                    for rid, why in lost.failed.items():
                        self._fail(rid, RequestFailed(f"internal error: a stage's output could not be read: {why}"))
                    msg = lost.rest
                if msg is not None:
                    self._on_message(msg)
            except zmq.ContextTerminated:
                return
            except Exception:  # noqa: BLE001 - one bad message must not stop every request's results
                self.internal_errors += 1
                log.exception("could not handle a message from a stage worker")

    def _unsent(self, msg: Any, exc: BaseException) -> None:
        """A message the wire could not encode (submit checks what it can): its request fails alone."""
        self.internal_errors += 1
        rid = getattr(msg, "rid", None)
        log.error("request %s: could not send %s to a stage: %s: %s", rid, type(msg).__name__, type(exc).__name__, exc)
        if rid is not None:
            self._fail(rid, RequestFailed(f"internal error: the request could not be sent to a stage: "
                                          f"{type(exc).__name__}: {exc}"))

    def _on_message(self, msg: Any) -> None:
        if isinstance(msg, Chunks):
            for chunk in msg.items:
                live = self.requests.get(chunk.rid)
                if live is not None:
                    live.handle.push(ChunkEvent(chunk.modality, chunk.value))
        elif isinstance(msg, Done):
            self._on_done(msg)
        elif isinstance(msg, Failed):
            self._fail(msg.rid, _error(msg.error, msg.status, msg.stage, msg.param))
        elif isinstance(msg, ProbeResult):
            self._on_probe(msg)
        elif isinstance(msg, (Ready, StartFailed, Stats)):
            self._on_replica_message(msg)
        else:
            raise TypeError(f"orchestrator got unexpected message {type(msg).__name__}")

    def _on_replica_message(self, msg: Ready | StartFailed | Stats) -> None:
        replica = self.table.get(msg.stage, msg.replica)
        if replica is None:
            return  # it left the table meanwhile
        if isinstance(msg, Ready):
            self._mail.revive(msg.address)  # (a restarted replica may reuse a dead one's TCP port)
            self._peers.learn(msg.address, msg.node)
            self.infos[msg.stage] = msg.info
            self.table.set_state(replica, ReplicaState.READY, address=msg.address, node=msg.node)
        elif isinstance(msg, StartFailed):
            self.table.set_state(replica, ReplicaState.DEAD, error=msg.error)
        else:
            replica.stats = msg.values

    def _on_done(self, msg: Done) -> None:
        replica = self.table.get(msg.stage, msg.replica)
        if replica is not None:  # (also for a request forgotten here meanwhile: the replica no longer holds it)
            self.table.release(msg.rid, [replica])
            if self.shedder.sheds(msg.stage):
                self.shedder.completed(replica, len(self.table.held(replica)))
        with self._lock:
            live = self.requests.get(msg.rid)
            if live is None:
                return
            live.pending.discard((msg.stage, msg.replica))
            live.meta[msg.stage] = msg.meta
            self.completions[self.plan.unit(msg.stage, live.group)] += 1  # the replica may have changed group since
            finished = not live.pending
            if finished:
                del self.requests[msg.rid]
        if finished:
            live.handle.push(DoneEvent(live.meta))
            self.goodput.finished(live.route.stages, live.group, live.handle, live.queued)

    def _monitor(self) -> None:
        while not self._stopping.wait(MONITOR_PERIOD_S):
            for replica in self.table.all():
                # (a dead draining replica stays DRAINING, with its error, until the scaler takes it)
                if replica.state in (ReplicaState.READY, ReplicaState.DRAINING) and not replica.error \
                        and not replica.runtime.is_alive() and not self._stopping.is_set():
                    self._on_replica_death(replica)
            if not self._stopping.is_set():
                self.supervisor.poll()

    def _on_replica_death(self, replica: Replica) -> None:
        """Fail what it held; a serving replica goes to the supervisor, a draining one has simply
        finished draining (the scaler stops it and reclaims its device)."""
        serving = self.table.transition(replica, ReplicaState.READY, ReplicaState.DEAD)
        self.table.set_state(replica, replica.state, error=f"its process exited ({replica.runtime.exit_reason()})")
        self._mail.drop(replica.address)  # what is queued for it can never be delivered
        remove_segment(self.session, f"{replica.stage}-{replica.index}")  # its ring: it cannot unlink it now
        for rid in self.table.held(replica):
            self._fail(rid, StageDeadError(f"stage {replica.stage!r} replica {replica.index} died "
                                           f"while serving the request", stage=replica.stage))
        if serving:
            self.supervisor.replace(replica)


def _check_sendable(values: Mapping[str, Any]) -> None:
    """Refuse here what the wire could not encode: never let it reach a sending thread."""
    for name, value in values.items():
        if (bad := unsendable(value, name)) is not None:
            raise RequestRejected(f"{bad} cannot be sent to a stage: use valid text, bytes, 64-bit numbers, "
                                  "lists, dicts, tensors or numeric arrays", param=name)


def request_group(inputs: Mapping[str, Any]) -> str:
    """The modality group a request belongs to: media in it makes it multimodal."""
    return "multimodal" if any(inputs.get(k) for k in ("images", "video", "audio")) else "text"


def _error(message: str, status: int, stage: str, param: str | None = None) -> RequestFailed | RequestRejected:
    return RequestRejected(message, param, status) if 0 < status < 500 else RequestFailed(message, stage=stage)
