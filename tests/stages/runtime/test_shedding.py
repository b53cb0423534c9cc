"""Early shedding: a stage whose SLO says ``shed`` refuses (503) at admission the requests that
would queue past their bounds, at the replica's measured pace, and serves the rest within them;
without ``shed`` every request is admitted and the late ones miss."""
import pytest

from omnistage import Pipeline
from omnistage.api.metrics import Metrics
from omnistage.errors import Overloaded
from omnistage.graph.compile import compile_text
from omnistage.checkpoints import resolve_model
from omnistage.stages.runtime.replicas import Replica
from omnistage.stages.runtime.goodput import Goodput
from omnistage.stages.runtime.shedding import Shedder

GRAPH = """
name: shed
stages:
  post:
    kind: python
    inputs: {{text: request.prompt}}
    outputs: {{text: response.text}}
    batching: {{max_batch: 1}}
    slo: {{e2e_s: 1.35, shed: {shed}}}
    options: {{function: "tests.stages.runtime.user_functions:pause", outputs: {{text: text}}}}
"""


def _burst(pipe, n, seconds):
    handles, refused = [], []
    for _ in range(n):
        try:
            handles.append(pipe.submit(prompt=seconds))
        except Overloaded as exc:
            refused.append(exc)
    for handle in handles:
        assert handle.result(30).text == seconds
    return handles, refused


@pytest.mark.parametrize("shed", [True, False])
def test_a_stage_that_sheds_refuses_what_would_queue_past_its_slo(tmp_path, shed):
    graph = tmp_path / "shed.yaml"
    graph.write_text(GRAPH.format(shed=str(shed).lower()))
    with Pipeline.from_yaml(graph, in_process=True) as pipe:
        _, refused = _burst(pipe, 3, "0.3")  # measures the pace (0.3 s) and the budget (~1.05 s)
        assert not refused  # (nothing measured yet: nothing is refused)
        orch = pipe.orchestrator
        met_before = orch.goodput.met["post"]
        handles, refused = _burst(pipe, 10, "0.3")
        if not shed:
            assert not refused and orch.shedder.shed["post"] == 0
            assert orch.goodput.met["post"] - met_before <= 5  # the rest queued past 1.35 s
            return
        # the k-th request of the burst waits ~0.3k s: from k = 4 on, past the ~1.05 s budget
        assert 3 <= len(handles) <= 5 and len(refused) == 10 - len(handles) == orch.shedder.shed["post"]
        assert all(exc.status == 503 and "within its SLO" in str(exc) for exc in refused)
        assert orch.goodput.met["post"] - met_before == len(handles)  # every admitted one met it
        metrics = Metrics("m")
        metrics.slo(orch.goodput, orch.shedder.shed)
        assert f'omnistage_shed_requests_total{{unit="post"}} {float(len(refused))}' in metrics.render([]).decode()


def test_pace_counts_only_completions_that_left_the_replica_full():
    plan = compile_text(GRAPH.format(shed="true"), resolve_model)
    shedder = Shedder(plan, Goodput(plan))
    replica = Replica("post", 0, runtime=None)
    assert shedder.admit("post", "text", replica, ahead=5)  # queued, but no pace yet: admitted
    shedder.completed(replica, still_held=0)  # not full after it: no gap starts
    assert shedder.predicted_wait(replica, 1) is None
    shedder.completed(replica, still_held=1)  # full: a gap starts here
    shedder.completed(replica, still_held=0)
    assert shedder.predicted_wait(replica, 4) == pytest.approx(4 * shedder._gaps[("post", 0)][0])
    assert shedder.wait_budget("post", "text") == 1.35  # no unqueued request finished yet
    assert not shedder.admit("post", "text", replica, ahead=0)  # a free slot: never refused
