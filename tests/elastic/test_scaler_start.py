"""A replica the scaler starts that is not ready within ``transport.startup_timeout_s`` is
killed, logged as failed, and its device goes back to the pool."""
from omnistage import Pipeline

GRAPH = """
name: hold
stages:
  echo:
    kind: python
    inputs: {text: request.prompt}
    outputs: {text: response.text}
    resources: {replicas: {min: 1, max: 2, initial: 1}}
    options: {function: "tests.elastic.hold:echo", outputs: {text: text}}
elastic: {enabled: false, devices: [cpu, cpu]}
transport: {startup_timeout_s: 15}
"""


def test_a_start_that_overruns_is_killed_and_its_device_reclaimed(tmp_path, monkeypatch):
    hold = tmp_path / "hold"
    monkeypatch.setenv("OMNISTAGE_TEST_HOLD", str(hold))
    graph = tmp_path / "hold.yaml"
    graph.write_text(GRAPH)
    with Pipeline.from_yaml(graph) as pipe:
        scaler, table = pipe.controller.scaler, pipe.orchestrator.table
        assert scaler.free == ["cpu"]
        hold.touch()
        stuck = scaler.add("echo", reason="test")
        assert scaler.free == []
        # (the controller's interval polls the scaler even with the policy off)
        assert table.wait_until(lambda: table.get("echo", stuck.index) is None, 30)
        scaler.poll()  # (polls run one at a time: this one waits for the poll that took it out to release it)
        assert scaler.free == ["cpu"]
        assert not stuck.runtime.is_alive()
        [failed] = [a for a in scaler.log if a.kind == "failed"]
        assert failed.replica == stuck.index and "not ready after 15 s" in failed.reason
        assert pipe.generate(prompt="still here").text == "still here"
