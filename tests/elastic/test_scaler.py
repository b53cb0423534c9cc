"""The scaler's actions on real worker processes, behind the real server: drain without loss, a
role switch under load, readiness staying up through both, and every action in /metrics."""
import threading

import httpx
import pytest

from omnistage.api.metrics import Metrics
from omnistage.stages.runtime.replicas import ReplicaState
from tests.api.conftest import Server
from tests.conftest import ROOT

READY = ReplicaState.READY


def wait_for(pipe, condition, timeout=90.0):
    """Wait on the replica table's condition (the scaler's poll advances drains)."""
    return pipe.orchestrator.table.wait_until(condition, timeout)


def ready(pipe, stage):
    return pipe.orchestrator.table.ready_count(stage)


class HealthWatch:
    """Polls /health every 50 ms in a thread and keeps every status it saw."""

    def __init__(self, url):
        self.url, self.seen, self._stop = url, [], threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.wait(0.05):
            self.seen.append(httpx.get(f"{self.url}/health", timeout=10).status_code)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(10)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The elastic example with the controller switched off: actions are driven by the test."""
    text = (ROOT / "examples" / "elastic.yaml").read_text().replace("  devices: [cpu, cpu, cpu]",
                                                                   "  enabled: false\n  devices: [cpu, cpu, cpu]")
    path = tmp_path_factory.mktemp("g") / "elastic.yaml"
    path.write_text(text)
    with Server(path) as server:
        yield server


def test_drain_finishes_what_the_replica_holds_and_frees_its_device(server):
    pipe = server.pipeline
    scaler = pipe.controller.scaler
    handles = [pipe.submit(prompt=f"tell me a story {i}", max_tokens=24, temperature=0, ignore_eos=True)
               for i in range(8)]
    busy = max(pipe.orchestrator.table.of("chat", state=READY), key=lambda r: len(r.inflight))
    assert busy.inflight
    with HealthWatch(server.url) as watch:
        scaler.drain(busy, reason="test")
        assert busy.state is ReplicaState.DRAINING  # it holds requests: it cannot have stopped yet
        results = [h.result(120) for h in handles]  # nothing dropped, each answered once
        assert all(r.usage["completion_tokens"] == 24 for r in results)
        assert wait_for(pipe, lambda: busy not in pipe.orchestrator.table.of("chat"))
    assert wait_for(pipe, lambda: bool(scaler.free), timeout=5) and scaler.free == ["cpu"]
    # The stopped replica left the table; readiness never dropped while the other one served.
    assert [r.state for r in pipe.orchestrator.table.of("chat")] == [READY]
    assert watch.seen and set(watch.seen) == {200}
    assert httpx.get(f"{server.url}/health").json()["stages"] == {"chat": "ready", "image": "ready"}
    assert pipe.generate(prompt="still serving", max_tokens=4).text is not None
    # put it back for the next test
    scaler.add("chat", reason="test")
    assert wait_for(pipe, lambda: ready(pipe, "chat") == 2)


def test_a_draining_replica_that_dies_is_the_scalers_not_the_supervisors(server):
    """Who owns a replica: a dead serving replica is restarted by the supervisor; a draining one
    that dies has simply finished draining, so the scaler stops it and reclaims its device."""
    import os

    from omnistage.errors import StageDeadError
    pipe = server.pipeline
    scaler = pipe.controller.scaler
    handles = [pipe.submit(prompt=f"a long story {i}", max_tokens=100_000, temperature=0, ignore_eos=True)
               for i in range(4)]
    busy = max(pipe.orchestrator.table.of("chat", state=READY), key=lambda r: len(r.inflight))
    held = set(busy.inflight)
    assert held
    restarts = len(pipe.orchestrator.supervisor.log)
    scaler.drain(busy, reason="test")
    os.kill(busy.runtime.pid, 9)
    for h in handles:
        if h.rid in held:
            with pytest.raises(StageDeadError):
                h.result(10)
        else:
            pipe.orchestrator.abort(h.rid)
    assert wait_for(pipe, lambda: busy not in pipe.orchestrator.table.of("chat"), timeout=10)
    assert wait_for(pipe, lambda: bool(scaler.free), timeout=5) and scaler.free == ["cpu"]
    assert len(pipe.orchestrator.supervisor.log) == restarts  # not restarted
    assert "stopped" in [a.kind for a in scaler.log[-2:]]
    scaler.add("chat", reason="test")
    assert wait_for(pipe, lambda: ready(pipe, "chat") == 2)


def test_role_switch_under_load_keeps_the_server_ready(server):
    pipe = server.pipeline
    scaler = pipe.controller.scaler
    images = [pipe.submit(prompt=f"a cat {i}", num_inference_steps=10, seed=i, modalities=["image"])
              for i in range(6)]
    chats = [pipe.submit(prompt=f"hello {i}", max_tokens=16, temperature=0) for i in range(6)]
    with HealthWatch(server.url) as watch:
        assert scaler.move("chat", "image", reason="test")
        assert wait_for(pipe, lambda: ready(pipe, "image") == 2)
        assert ready(pipe, "chat") == 1
        more = [pipe.submit(prompt=f"a dog {i}", num_inference_steps=10, seed=i, modalities=["image"])
                for i in range(6)]
        outputs = [h.result(180).outputs for h in images + more + chats]
    assert sum("image" in o for o in outputs) == 12 and sum("text" in o for o in outputs) == 6
    assert watch.seen and set(watch.seen) == {200}
    assert len(pipe.orchestrator.table.of("chat")) == 1  # the drained replica is gone, not "stopped"
    new = pipe.orchestrator.table.of("image")[-1]
    assert pipe.orchestrator.completions["image"] >= 12 and new.state is READY
    kinds = [a.kind for a in scaler.log]
    assert "move" in kinds and "stopped" in kinds and kinds[-1] == "add"


def test_metrics_show_replicas_and_every_action_with_its_reason(server):
    pipe = server.pipeline
    text = Metrics().render(pipe.orchestrator.table.all(), pipe.controller.scaler.log).decode()
    assert 'omnistage_stage_replicas{stage="image",state="ready"} 2.0' in text
    assert 'kind="move"' in text and 'reason="chat -> image: test"' in text
    served = httpx.get(f"{server.url}/metrics").text
    assert 'omnistage_stage_replicas{stage="chat",state="ready"} 1.0' in served
    assert httpx.get(f"{server.url}/live").json() == {"status": "ok"}
