"""The worker's gather/forward logic, driven in-process with a python engine (no sockets)."""
import queue

import pytest

from omnistage.checkpoints import resolve_model
from omnistage.connectors.messages import Abort, Admit, Chunk, Chunks, Data, Dest, Done, Failed
from omnistage.graph.compile import compile_text
from omnistage.stages.kinds.python import PythonEngine
from omnistage.stages.worker.loop import StageWorker, WorkerSpec

GRAPH = """
name: fan-in
stages:
  join:
    kind: python
    inputs: {a: request.prompt, b: request.messages}
    outputs: {out: response.text}
    options: {function: "tests.stages.test_worker:join", outputs: {out: text}}
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
    return StageWorker(spec, PythonEngine(join, ("out",), 4), inbox=None, mail=None)


def _admit(rid, routes=None):
    return Admit(rid, ["a", "b"], routes or {"out": [Dest("sink", "text", True)]}, {}, "sink")


def _sent(worker):
    out = []
    while True:
        try:
            out.append(worker._out.get_nowait())
        except queue.Empty:
            return out


def test_waits_for_every_port_even_when_data_beats_the_admit(worker):
    worker._apply(Data("r", "a", "x"))  # before the Admit: held, not lost
    worker._apply(_admit("r"))
    assert not worker.engine.has_work()
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
    assert not worker.engine.has_work() and "gone" not in worker.requests.admitted
    assert "gone" not in worker.requests.early


def test_engine_that_omits_a_routed_port_fails_the_request(worker):
    worker.engine = PythonEngine(lambda a, b: {"out": a}, ("out",), 4)
    worker._apply(_admit("r", {"out": [Dest("next", "text")], "missing": [Dest("next", "x")]}))
    worker._apply(Data("r", "a", "1"))
    worker._apply(Data("r", "b", "2"))
    worker._emit(worker._step())
    [(_, failed)] = _sent(worker)
    assert "without a value for port 'missing'" in failed.error
