"""Elastic runtime on real worker processes: drain without loss, role switch under load, and the
controller moving a CPU slot from chat to image generation as the load shifts."""
import time

import pytest

from omnistage.graph.compile import compile_file
from omnistage.pipeline import Pipeline
from tests.conftest import ROOT


def wait_for(pipe, condition, timeout=90.0):
    """Wait on the orchestrator's replica-table condition (the controller thread advances drains)."""
    return pipe.orchestrator.wait_until(condition, timeout)


def states(pipe, stage):
    return [r.state for r in pipe.orchestrator.replicas[stage]]


@pytest.fixture(scope="module")
def manual(tmp_path_factory):
    """The elastic example with the controller switched off: actions are driven by the test."""
    text = (ROOT / "examples" / "elastic.yaml").read_text().replace("  devices: [cpu, cpu, cpu]",
                                                                   "  enabled: false\n  devices: [cpu, cpu, cpu]")
    path = tmp_path_factory.mktemp("g") / "elastic.yaml"
    path.write_text(text)
    with Pipeline(compile_file(path)) as pipe:
        yield pipe


def test_drain_finishes_what_the_replica_holds_and_frees_its_device(manual):
    scaler = manual.orchestrator.controller.scaler
    handles = [manual.submit(prompt=f"tell me a story {i}", max_tokens=24, temperature=0, ignore_eos=True)
               for i in range(8)]
    busy = max((r for r in manual.orchestrator.replicas["chat"] if r.state == "ready"), key=lambda r: len(r.inflight))
    assert busy.inflight
    scaler.drain(busy, reason="test")
    assert busy.state in ("draining", "stopped")
    results = [h.result(120) for h in handles]  # nothing dropped, each answered once
    assert all(r.usage["completion_tokens"] == 24 for r in results)
    assert wait_for(manual, lambda: busy.state == "stopped" and scaler.free)
    assert scaler.free == ["cpu"]
    assert manual.generate(prompt="still serving", max_tokens=4).text is not None  # the other replica
    # put it back for the next test
    scaler.add("chat", reason="test")
    assert wait_for(manual, lambda: states(manual, "chat").count("ready") == 2)


def test_role_switch_under_load(manual):
    scaler = manual.orchestrator.controller.scaler
    images = [manual.submit(prompt=f"a cat {i}", num_inference_steps=10, seed=i, modalities=["image"])
              for i in range(6)]
    chats = [manual.submit(prompt=f"hello {i}", max_tokens=16, temperature=0) for i in range(6)]
    assert scaler.move("chat", "image", reason="test")
    assert wait_for(manual, lambda: states(manual, "image").count("ready") == 2)
    assert states(manual, "chat").count("ready") == 1
    more = [manual.submit(prompt=f"a dog {i}", num_inference_steps=10, seed=i, modalities=["image"])
            for i in range(6)]
    outputs = [h.result(180).outputs for h in images + more + chats]
    assert sum("image" in o for o in outputs) == 12 and sum("text" in o for o in outputs) == 6
    new = manual.orchestrator.replicas["image"][-1]
    assert manual.orchestrator.completions["image"] >= 12 and new.state == "ready"
    kinds = [a.kind for a in scaler.log]
    assert "move" in kinds and "stopped" in kinds and kinds[-1] == "add"


def test_the_controller_moves_a_slot_to_image_generation_when_the_load_shifts():
    with Pipeline.from_yaml(ROOT / "examples" / "elastic.yaml") as pipe:
        controller = pipe.orchestrator.controller
        assert states(pipe, "chat").count("ready") == 2 and states(pipe, "image").count("ready") == 1
        chat = [pipe.submit(prompt=f"hi {i}", max_tokens=8, temperature=0) for i in range(8)]
        handles = []
        deadline = time.time() + 90
        moved = False  # keep image requests coming (4 every 0.5 s) until a second image replica is ready
        while time.time() < deadline and not moved:
            handles += [pipe.submit(prompt=f"a red cat {len(handles)}", num_inference_steps=30,
                                    seed=len(handles), modalities=["image"]) for _ in range(4)]
            moved = wait_for(pipe, lambda: states(pipe, "image").count("ready") >= 2, timeout=0.5)
        assert states(pipe, "image").count("ready") == 2, controller.scaler.log
        assert states(pipe, "chat").count("ready") == 1
        log = controller.scaler.log
        # the slot went from chat to image: as a role switch, or chat gave it back when idle and
        # image took it from the pool when its queue grew
        assert any(a.kind == "stopped" and a.stage == "chat" for a in log)
        assert any(a.kind == "add" and a.stage == "image" for a in log)
        assert any("delay" in a.reason for a in log if a.stage == "image" or "-> image" in a.reason)
        outputs = [h.result(300).outputs for h in chat + handles]
        assert sum("image" in o for o in outputs) == len(handles) and sum("text" in o for o in outputs) == 8
        assert pipe.orchestrator.completions["image"] == len(handles)  # each exactly once


def test_metrics_show_replicas_and_every_action_with_its_reason(manual):
    from omnistage.api.metrics import Metrics
    orch = manual.orchestrator
    text = Metrics().render(orch.replicas, dict(orch.stats), orch.controller.scaler.log).decode()
    assert 'omnistage_stage_replicas{stage="image",state="ready"} 2.0' in text
    assert 'kind="move"' in text and 'reason="chat -> image: test"' in text
