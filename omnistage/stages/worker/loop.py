"""A stage replica's loop: gathers each request's inputs, runs the stage, forwards outputs.

Two threads of its own. The reader turns inbox messages into a queue; the main loop below
touches only that queue, the stage, and the Mailer (whose ``put`` never blocks: each
destination has its own sending thread). The same class runs in a
spawned process (production) or in a thread (the in-process twin used for debugging).

Errors (see ``stage.Stage``): a request the client got wrong fails alone with its 4xx; an
unexpected exception while one request is taken in fails that request alone with a 500, is
logged with its traceback and counted (``internal_errors``); an exception from ``step`` fails
everything this replica holds and ends it.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from omnistage.connectors.messages import (Abort, Admit, Chunk, Chunks, Data, Done, Failed, Part, Probe, ProbeResult,
                                           Shutdown, Stats)
from omnistage.connectors.mailer import Mailer
from omnistage.connectors.transport import Inbox, Peers
from omnistage.connectors.wire import Unreadable, unsendable
from omnistage.errors import RequestRejected
from omnistage.stages.worker.cores import CoreShare
from omnistage.stages.worker.gather import Gather
from omnistage.stages.worker.spec import WorkerSpec
from omnistage.stages.worker.stage import ProbingStage, Stage, StageOutput, StageRequest, StreamingInputStage, concat

_POLL_MS = 50
STATS_PERIOD_S = 0.5
log = logging.getLogger("omnistage.worker")


class WorkerCrashed(RuntimeError):
    """The replica cannot go on; raised out of its loop so that its process ends."""


@dataclass(frozen=True)
class _Lost:
    """A message of ``rid`` that could not be encoded (from a sending thread) or read (from the
    reading thread)."""

    rid: str
    error: str


@dataclass(frozen=True)
class _IoDied:
    error: str


@dataclass(frozen=True)
class _Prepared:
    """A probe whose request was prepared off the main loop (success or error in ``future``)."""

    probe: Probe
    future: Future[Any]


class StageWorker:
    def __init__(self, spec: WorkerSpec, stage: Stage, inbox: Inbox, mail: Mailer,
                 cores: CoreShare | None = None, peers: Peers | None = None) -> None:
        self.spec = spec
        self.peers = peers  # where destinations run (how tensors reach them), learned from Admits
        self.cores = cores  # threads that follow this host's load, or fixed ones
        self.stage = stage
        self.streaming = {p.name for p in spec.plan.stages[spec.stage].outputs if p.streaming}
        self._inbox, self._mail = inbox, mail
        self._in: queue.Queue[Any] = queue.Queue()
        self._stop = threading.Event()
        self.requests = Gather()
        self.held: dict[str, dict[str, Any]] = defaultdict(dict)  # outputs bound for other stages
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{spec.name}-prepare")
        self._reported = 0.0
        self._step_ema = 0.0
        self._started: dict[str, float] = {}  # requests started here that have not output yet
        self._arrived: dict[str, float] = {}  # when each request started here (its inputs complete)
        self._first_output_ema = 0.0  # seconds from a request's start here to its first output
        self.internal_errors = 0  # requests failed by an unexpected exception while taken in
        if mail is not None:  # (tests drive the loop without transport)
            mail.on_unsent = self._unsent

    # --- the loop -----------------------------------------------------------------------
    def run(self) -> None:
        reader = threading.Thread(target=self._supervised, args=(self._read,), name=f"{self.spec.name}-reader",
                                  daemon=True)
        reader.start()
        try:
            while self._handle_messages(block=not self.stage.has_work()):
                if self.stage.has_work():
                    self._emit(self._step())
                self._report()
        finally:
            self._stop.set()
            self._pool.shutdown(cancel_futures=True)
            reader.join()
            self._inbox.close()

    def _report(self) -> None:
        """Send this replica's numbers to the orchestrator, at most every STATS_PERIOD_S."""
        now = time.monotonic()
        if now - self._reported < STATS_PERIOD_S:
            return
        self._reported = now
        values = dict(self.stage.stats())
        values.update(step_seconds=self._step_ema, admitted=float(len(self.requests.admitted)),
                      first_output_seconds=self._first_output_ema, internal_errors=float(self.internal_errors))
        self._mail.put(self.spec.sink, Stats(self.spec.stage, self.spec.replica, values))

    def _step(self) -> list[StageOutput]:
        if self.cores is not None:
            self.cores.before_step()
        start = time.perf_counter()
        try:
            outputs = self.stage.step()
            took = time.perf_counter() - start
            self._step_ema = 0.9 * self._step_ema + 0.1 * took
            if self.cores is not None:
                self.cores.after_step(took)
            return outputs
        except Exception as exc:
            self._crash(f"{type(exc).__name__}: {exc}")
            raise

    def _crash(self, why: str) -> None:
        """A broken step (or I/O thread) is a crashed stage: fail what it holds, then die loudly."""
        for rid in list(self.requests.admitted):
            self._fail(rid, f"stage {self.spec.stage!r} crashed: {why}")

    def _handle_messages(self, block: bool) -> bool:
        """Apply queued messages; False once Shutdown arrives."""
        if block and self.cores is not None:
            self.cores.idle()  # nothing to step: the cores are the others' until a message comes
        try:
            msg = self._in.get(timeout=_POLL_MS / 1000) if block else self._in.get_nowait()
        except queue.Empty:
            return True
        while True:
            if isinstance(msg, Shutdown):
                return False
            self._apply(msg)
            try:
                msg = self._in.get_nowait()
            except queue.Empty:
                return True

    def _apply(self, msg: Any) -> None:
        if isinstance(msg, Admit):
            if self.peers is not None:
                for dests in msg.routes.values():
                    for dest in dests:
                        self.peers.learn(dest.address, dest.node, dest.device)
            if self.requests.admit(msg):
                self._start(msg.rid)
        elif isinstance(msg, Part) and msg.rid in self.requests.started:
            self._feed(msg)
        elif isinstance(msg, (Data, Part)):
            if self.requests.data(msg):
                self._start(msg.rid)
        elif isinstance(msg, Probe):
            self._probe(msg)
        elif isinstance(msg, _Prepared):
            self._probed(msg)
        elif isinstance(msg, Abort):
            self.stage.abort(msg.rid)
            self._forget(msg.rid)
        elif isinstance(msg, _Lost):
            if msg.rid in self.requests.admitted:
                self._fail(msg.rid, msg.error)
            else:  # not held here (finished already, or not admitted yet): the sink must still hear
                self._mail.put(self.spec.sink, Failed(msg.rid, self.spec.stage, self.spec.replica, msg.error, 500))
        elif isinstance(msg, _IoDied):
            self._crash(msg.error)
            raise WorkerCrashed(msg.error)
        else:
            raise TypeError(f"stage worker got unexpected message {type(msg).__name__}")

    # --- taking requests in -----------------------------------------------------------------
    def _start(self, rid: str) -> None:
        inputs, open_ports = self.requests.take(rid)
        self._started[rid] = self._arrived[rid] = time.perf_counter()
        admit = self.requests.admitted[rid]
        request = StageRequest(rid, inputs, admit.params, open_ports, frozenset(admit.routes))
        self._taking_in(rid, "take the request", lambda: self.stage.add(request))

    def _feed(self, part: Part) -> None:
        """A further delta of a started request's streamed input."""
        assert isinstance(self.stage, StreamingInputStage), "build_stage checks that streamed inputs are fed"
        feed = self.stage.feed
        self._taking_in(part.rid, "take a streamed input",
                        lambda: feed(part.rid, part.port, [] if part.last else [part.value], part.last))

    def _taking_in(self, rid: str, what: str, call: Callable[[], None]) -> None:
        """Run ``call`` for one request; its failure fails that request only (see module docstring)."""
        try:
            call()
        except RequestRejected as exc:
            self._fail(rid, str(exc), exc.status, exc.param)
        except Exception as exc:  # noqa: BLE001 - one request's unexpected failure must not end the replica
            self._fail(rid, self._internal_error(rid, what, exc))

    def _internal_error(self, rid: str, what: str, exc: Exception) -> str:
        """Count and log (with its traceback) a request's unexpected failure; the error to send."""
        self.internal_errors += 1
        log.error("stage %r could not %s %s", self.spec.stage, what, rid, exc_info=exc)
        return f"internal error: stage {self.spec.stage!r} could not {what}: {type(exc).__name__}: {exc}"

    def _probe(self, msg: Probe) -> None:
        """Let the stage prepare the request now, off this loop (decoding and preprocessing media
        must not stall the steps of other requests); the result comes back as _Prepared."""
        if not isinstance(self.stage, ProbingStage):
            raise TypeError(f"stage {self.spec.stage!r} was probed but is not a ProbingStage")
        inputs = msg.inputs if msg.images is None else {**msg.inputs, "images": msg.images}
        self.requests.provide(msg.rid, inputs)
        future = self._pool.submit(self.stage.prepare, msg.rid, inputs, msg.params)
        future.add_done_callback(lambda f: self._in.put(_Prepared(msg, f)))

    def _probed(self, done: _Prepared) -> None:
        msg = done.probe
        if msg.rid in self.requests.gone:
            return  # aborted while it was being prepared
        assert isinstance(self.stage, ProbingStage)
        try:
            covered = self.stage.probe_prepared(done.future.result())
        except RequestRejected as exc:
            self._probe_failed(msg, str(exc), exc.status)
            return
        except Exception as exc:  # noqa: BLE001 - one request's unexpected failure must not end the replica
            self._probe_failed(msg, self._internal_error(msg.rid, "prepare the request", exc), 500)
            return
        self._mail.put(msg.sink, ProbeResult(msg.rid, self.spec.stage, self.spec.replica, covered))

    def _probe_failed(self, msg: Probe, error: str, status: int) -> None:
        self._mail.put(msg.sink, ProbeResult(msg.rid, self.spec.stage, self.spec.replica, [], error, status))
        self._forget(msg.rid)

    # --- outputs --------------------------------------------------------------------------
    def _emit(self, outputs: list[StageOutput]) -> None:
        # Response chunks of one step go to each sink as one message; a request's Done or
        # Failed is queued after that batch, so it never overtakes its own chunks.
        chunks: dict[str, list[Chunk]] = {}
        finished: list[tuple[Admit, StageOutput]] = []
        now = time.perf_counter()
        for out in outputs:
            admit = self.requests.admitted.get(out.rid)
            if admit is None:
                continue  # aborted while the step ran
            started = self._started.pop(out.rid, None)
            if started is not None:
                self._first_output_ema = 0.9 * self._first_output_ema + 0.1 * (now - started)
            if out.error is None and (bad := unsendable(out.meta, "meta") or unsendable(out.ports, "output")):
                # Found here, the request fails before its Done is sent (the sending thread would be too late).
                out.error = self._internal_error(out.rid, "send its output", TypeError(f"{bad} cannot be sent"))
                out.status = 500
            if out.error is None:
                self._route(admit, out, chunks)
            if out.finished or out.error is not None:
                finished.append((admit, out))
        for sink, items in chunks.items():
            self._mail.put(sink, Chunks(items))
        for admit, out in finished:
            if out.error is not None:
                self._fail(out.rid, out.error, out.status, out.param)
            else:
                self._finish(admit, out)

    def _route(self, admit: Admit, out: StageOutput, chunks: dict[str, list[Chunk]]) -> None:
        """Each port's value to where the request's route sends it: the response (a chunk), a
        streamed input downstream (a Part now), or held until the request finishes here."""
        for port, value in out.ports.items():
            for dest in admit.routes.get(port, ()):
                if dest.to_response:
                    chunks.setdefault(admit.sink, []).append(Chunk(out.rid, dest.port, value))
                elif dest.stream:
                    self._mail.put(dest.address, Part(out.rid, dest.port, value))
                elif port in self.streaming:
                    self.held[out.rid][port] = concat(self.held[out.rid].get(port), value)
                else:
                    self.held[out.rid][port] = value

    def _finish(self, admit: Admit, out: StageOutput) -> None:
        held = self.held.pop(admit.rid, {})
        onward = [(port, dest) for port, dests in admit.routes.items() for dest in dests if not dest.to_response]
        missing = sorted({port for port, dest in onward if port not in held and not dest.stream})
        if missing:
            self._fail(admit.rid, f"stage {self.spec.stage!r} finished without a value for port {missing[0]!r}")
            return
        for port, dest in onward:
            message = Part(admit.rid, dest.port, None, last=True) if dest.stream else Data(admit.rid, dest.port, held[port])
            self._mail.put(dest.address, message)
        meta = dict(out.meta, stage_seconds=time.perf_counter() - self._arrived.get(admit.rid, time.perf_counter()))
        self._mail.put(admit.sink, Done(admit.rid, self.spec.stage, self.spec.replica, meta))
        self._forget(admit.rid)

    def _fail(self, rid: str, error: str, status: int = 500, param: str | None = None) -> None:
        admit = self.requests.admitted.get(rid)
        if admit is not None:
            self._mail.put(admit.sink, Failed(rid, self.spec.stage, self.spec.replica, error, status, param))
        self.stage.abort(rid)
        self._forget(rid)

    def _forget(self, rid: str) -> None:
        self._started.pop(rid, None)
        self._arrived.pop(rid, None)
        self.requests.forget(rid)
        self.held.pop(rid, None)

    # --- I/O threads ----------------------------------------------------------------------
    def _supervised(self, target: Callable[[], None]) -> None:
        """An I/O thread that dies takes the replica with it (its requests fail, the supervisor
        starts another): a replica that can no longer read or send must not look alive."""
        try:
            target()
        except BaseException as exc:
            log.critical("stage %r: I/O thread %s died", self.spec.stage, target.__name__, exc_info=exc)
            self._in.put(_IoDied(f"{target.__name__.strip('_')} thread died: {type(exc).__name__}: {exc}"))

    def _unsent(self, msg: Any, exc: BaseException) -> None:
        """A message the wire could not encode (from a sending thread): each request it carries
        fails. A Failed that cannot be sent is only logged, or this would loop."""
        rids = {c.rid for c in msg.items} if isinstance(msg, Chunks) else {getattr(msg, "rid", None)} - {None}
        self.internal_errors += 1
        log.error("stage %r: could not send %s for %s: %s: %s", self.spec.stage, type(msg).__name__,
                  ", ".join(sorted(rids)) or "no request", type(exc).__name__, exc)
        if not isinstance(msg, Failed):
            for rid in rids:
                self._in.put(_Lost(rid, f"internal error: stage {self.spec.stage!r} could not send its output: "
                                          f"{type(exc).__name__}: {exc}"))

    def _read(self) -> None:
        owner = self.spec.owner
        while not self._stop.is_set():
            try:
                msg = self._inbox.recv(timeout_ms=_POLL_MS)
            except Unreadable as lost:  # (a value of it could not be brought in: only its requests fail)
                log.error("stage %r: could not read a message: %s", self.spec.stage, lost)
                for rid, why in lost.failed.items():
                    self._in.put(_Lost(rid, f"could not read its input: {why}"))
                msg = lost.rest
            if msg is None and owner is not None and not _alive(owner):
                msg = Shutdown()  # orphaned: the orchestrator's process is gone
            if msg is not None:
                self._in.put(msg)
                if isinstance(msg, Shutdown):
                    return


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False
