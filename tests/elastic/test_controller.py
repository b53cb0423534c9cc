"""The controller on real worker processes: it moves a CPU slot from chat to image generation
as the load shifts."""
import time

from omnistage.pipeline import Pipeline
from omnistage.stages.runtime.replicas import ReplicaState
from tests.conftest import ROOT


def ready(pipe, stage):
    return pipe.orchestrator.table.ready_count(stage)


def test_the_controller_moves_a_slot_to_image_generation_when_the_load_shifts():
    with Pipeline.from_yaml(ROOT / "examples" / "elastic.yaml") as pipe:
        controller, table = pipe.controller, pipe.orchestrator.table
        assert ready(pipe, "chat") == 2 and ready(pipe, "image") == 1
        chat = [pipe.submit(prompt=f"hi {i}", max_tokens=8, temperature=0) for i in range(8)]
        handles = []
        deadline = time.time() + 90
        moved = False  # keep image requests coming (4 every 0.5 s) until a second image replica is ready
        while time.time() < deadline and not moved:
            handles += [pipe.submit(prompt=f"a red cat {len(handles)}", num_inference_steps=30,
                                    seed=len(handles), modalities=["image"]) for _ in range(4)]
            moved = table.wait_until(lambda: ready(pipe, "image") >= 2, timeout=0.5)
        assert ready(pipe, "image") == 2, controller.scaler.log
        assert ready(pipe, "chat") == 1
        assert all(r.state is ReplicaState.READY for r in table.of("chat"))  # nothing "stopped" left behind
        log = controller.scaler.log
        # the slot went from chat to image: as a role switch, or chat gave it back when idle and
        # image took it from the pool when its queue grew
        assert any(a.kind == "stopped" and a.stage == "chat" for a in log)
        assert any(a.kind == "add" and a.stage == "image" for a in log)
        assert any("delay" in a.reason for a in log if a.stage == "image" or "-> image" in a.reason)
        outputs = [h.result(300).outputs for h in chat + handles]
        assert sum("image" in o for o in outputs) == len(handles) and sum("text" in o for o in outputs) == 8
        assert pipe.orchestrator.completions["image"] == len(handles)  # each exactly once
        # the policy's wait budgets: from the finished requests' slack, within the 2 s default SLO
        budgets = [load.wait_budget_s for load in controller.snapshot().stages.values()]
        assert all(budget is not None and budget < 2.0 for budget in budgets), budgets
