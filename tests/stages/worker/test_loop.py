"""The worker's gather/forward logic, driven in-process with a python stage (no sockets)."""
import pytest

from omnistage.checkpoints import resolve_model
from omnistage.connectors.messages import Abort, Admit, Chunk, Chunks, Data, Dest, Done, Failed, Shutdown
from omnistage.connectors.wire import Unreadable
from omnistage.graph.compile import compile_text
from omnistage.errors import RequestRejected
from omnistage.stages.kinds.python import PythonStage
from omnistage.stages.worker.loop import StageWorker
from omnistage.stages.worker.spec import WorkerSpec

GRAPH = """
name: fan-in
stages:
  join:
    kind: python
    inputs: {a: request.prompt, b: request.messages}
    outputs: {out: response.text}
    options: {function: "tests.stages.worker.test_loop:join", outputs: {out: text}}
"""


def join(a, b):
    if a == "boom":
        raise ValueError("bad a")
    return f"{a}+{b}"


def wrong_ports(a, b):
    return {"other": 1}


@pytest.fixture
def worker():
    plan = compile_text(GRAPH, resolve_model)
    spec = WorkerSpec(plan, "join", 0, "cpu", 1, "s", "/tmp", "sink")
    return StageWorker(spec, PythonStage(join, ("out",), 4), inbox=None, mail=Posted())


class Posted:
    """Stands in for the Mailer's ``put``: what the loop hands to the sending threads, in order."""

    def __init__(self):
        self.items, self.on_unsent = [], None

    def put(self, address, msg):
        self.items.append((address, msg))


def _admit(rid, routes=None):
    return Admit(rid, ["a", "b"], routes or {"out": [Dest("sink", "text", True)]}, {}, "sink")


def _sent(worker):
    out, worker._mail.items = worker._mail.items, []
    return out


def test_waits_for_every_port_even_when_data_beats_the_admit(worker):
    worker._apply(Data("r", "a", "x"))  # before the Admit: held, not lost
    worker._apply(_admit("r"))
    assert not worker.stage.has_work()
    worker._apply(Data("r", "b", "y"))
    worker._emit(worker._step())
    (sink1, chunks), (sink2, done) = _sent(worker)
    assert chunks == Chunks([Chunk("r", "text", "x+y")]) and isinstance(done, Done) and sink1 == sink2 == "sink"
    assert not worker.requests.admitted and not worker.requests.inputs


def test_downstream_stages_get_the_whole_value(worker):
    worker._apply(_admit("r", {"out": [Dest("next", "text")]}))
    worker._apply(Data("r", "a", "1"))
    worker._apply(Data("r", "b", "2"))
    worker._emit(worker._step())
    (addr, data), (_, done) = _sent(worker)
    assert addr == "next" and data == Data("r", "text", "1+2") and isinstance(done, Done)


def test_failures_and_aborts(worker):
    worker._apply(_admit("bad"))
    worker._apply(Data("bad", "a", "boom"))
    worker._apply(Data("bad", "b", "y"))
    worker._emit(worker._step())
    [(_, failed)] = _sent(worker)
    assert isinstance(failed, Failed) and failed.error == "ValueError: bad a"
    worker._apply(_admit("gone"))
    worker._apply(Data("gone", "a", "x"))
    worker._apply(Abort("gone"))
    worker._apply(Data("gone", "b", "late"))  # arrives after the abort: dropped, not kept
    assert not worker.stage.has_work() and "gone" not in worker.requests.admitted
    assert "gone" not in worker.requests.early


def test_a_stage_that_omits_a_routed_port_fails_the_request(worker):
    worker.stage = PythonStage(lambda a, b: {"out": a}, ("out",), 4)
    worker._apply(_admit("r", {"out": [Dest("next", "text")], "missing": [Dest("next", "x")]}))
    worker._apply(Data("r", "a", "1"))
    worker._apply(Data("r", "b", "2"))
    worker._emit(worker._step())
    [(_, failed)] = _sent(worker)
    assert "without a value for port 'missing'" in failed.error


class Picky(PythonStage):
    """A stage whose ``add`` fails on some input: as the client's fault, or with a bug."""

    def add(self, request):
        if request.inputs["a"] == "client":
            raise RequestRejected("a must not be 'client'", param="a")
        if request.inputs["a"] == "bug":
            raise KeyError("a key the stage forgot")
        super().add(request)


def test_an_unexpected_error_taking_one_request_in_fails_it_alone_as_internal(worker, caplog):
    worker.stage = Picky(join, ("out",), 4)
    for rid in ("client", "bug", "fine"):
        worker._apply(_admit(rid))
        worker._apply(Data(rid, "a", rid))
        worker._apply(Data(rid, "b", "y"))
    worker._emit(worker._step())
    (_, client), (_, bug), (_, chunks), (_, done) = _sent(worker)
    assert (client.status, client.param, client.error) == (400, "a", "a must not be 'client'")
    assert bug.status == 500 and bug.error.startswith("internal error: stage 'join' could not take the request: KeyError")
    assert chunks == Chunks([Chunk("fine", "text", "fine+y")]) and done.rid == "fine"  # the others are served
    assert worker.internal_errors == 1 and "KeyError" in caplog.text  # logged with its traceback
    assert not worker.requests.admitted


def test_a_step_that_raises_fails_everything_held_and_ends_the_replica(worker):
    class Broken(PythonStage):
        def step(self):
            raise RuntimeError("broken invariant")
    worker.stage = Broken(join, ("out",), 4)
    worker._apply(_admit("r"))
    worker._apply(Data("r", "a", "1"))
    worker._apply(Data("r", "b", "2"))
    with pytest.raises(RuntimeError, match="broken invariant"):
        worker._step()
    (_, failed), = _sent(worker)
    assert isinstance(failed, Failed) and "crashed: RuntimeError: broken invariant" in failed.error


class Scripted:
    """An inbox whose reads go as scripted: a message, or an exception raised by the read."""

    def __init__(self, *reads):
        self.reads = list(reads)

    def recv(self, timeout_ms=None):
        read = self.reads.pop(0)
        if isinstance(read, Exception):
            raise read
        return read


def test_an_input_that_cannot_be_read_fails_its_request_and_the_reader_lives_on(worker):
    worker._apply(_admit("r"))
    worker._apply(_admit("q"))
    worker._inbox = Scripted(Unreadable({"r": "FileNotFoundError: segment gone"}, None), Data("q", "a", "fine"),
                             Shutdown())
    worker._read()  # returns at the Shutdown: the unreadable message did not end it
    assert not worker._handle_messages(block=False)
    (_, failed), = _sent(worker)
    assert isinstance(failed, Failed) and failed.rid == "r" and failed.status == 500
    assert "could not read its input: FileNotFoundError: segment gone" in failed.error
    assert "r" not in worker.requests.admitted and "q" in worker.requests.admitted  # (q's Data was read after)
