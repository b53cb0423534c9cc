"""Goodput per unit: a finished request counts as met when within its unit's SLO, else missed;
a failed one is missed, one refused as the client's mistake is not counted; /metrics shows the
counts once each and the rate; the wait budget comes from the slack of finished requests, the calm slack from those that
did not queue."""
import pytest

from omnistage import Pipeline
from omnistage.api.metrics import Metrics
from omnistage.errors import RequestFailed
from omnistage.stages.runtime.handle import RequestHandle

GRAPH = """
name: slo
stages:
  post:
    kind: python
    inputs: {text: request.prompt}
    outputs: {text: response.text}
    slo: {e2e_s: 0.3}
    options: {function: "tests.stages.runtime.user_functions:pause", outputs: {text: text}}
"""


def test_requests_count_as_met_or_missed_against_their_units_slo(tmp_path):
    graph = tmp_path / "slo.yaml"
    graph.write_text(GRAPH)
    with Pipeline.from_yaml(graph, in_process=True) as pipe:
        goodput = pipe.orchestrator.goodput
        assert goodput.wait_budget("post") is None  # nothing finished yet
        for text in ("0", "0", "0.6"):
            assert pipe.generate(prompt=text).text == text
        with pytest.raises(RequestFailed):
            pipe.generate(prompt="fail")
        assert (goodput.met, goodput.missed) == ({"post": 2}, {"post": 2})
        assert 0 < goodput.rate()["post"]
        # slack: ~0.3 s twice, -0.3 s once: a request may queue nearly the whole 0.3 s
        assert 0.2 < goodput.wait_budget("post") < 0.3
        assert 0.2 < goodput.calm_slack("post") < 0.3  # the median; none of them queued
        late = RequestHandle("late")
        late.finished_at = late.created_at + 1.0
        goodput.finished(["post"], "text", late, queued={"post"})  # queued: not a calm sample
        assert 0.2 < goodput.calm_slack("post") < 0.3
        goodput.finished(["post"], "text", late)
        goodput.finished(["post"], "text", late)
        assert goodput.calm_slack("post") < 0  # -0.7 s twice more: the median moves
        metrics = Metrics("m")
        for _ in range(2):  # (each request counted once, however often /metrics is read)
            metrics.slo(goodput)
        text = metrics.render([]).decode()
        assert 'omnistage_slo_requests_total{result="met",unit="post"} 2.0' in text
        assert 'omnistage_slo_requests_total{result="missed",unit="post"} 5.0' in text
        assert 'omnistage_goodput_requests_per_second{unit="post"}' in text
