"""Replica processes start from a fork server, with their launcher's environment of the moment."""
import os
from pathlib import Path

import pytest

from omnistage import Pipeline
from omnistage.stages.runtime.launcher import worker_context

GRAPH = Path(__file__).parent / "graphs" / "environment.yaml"


def _read(pipe: Pipeline, name: str) -> str:
    return pipe.submit(prompt=name).result(timeout=60).outputs["text"]


def test_a_replica_sees_the_environment_its_launcher_has_when_it_starts(monkeypatch):
    with Pipeline.from_yaml(GRAPH) as pipe:  # the fork server is running from here on
        assert _read(pipe, "OMNISTAGE_TEST_MARK") == ""
        [replica] = pipe.orchestrator.table.all()
        assert worker_context().get_start_method() == "forkserver" and replica.runtime.pid != os.getpid()
    monkeypatch.setenv("OMNISTAGE_TEST_MARK", "set after the fork server started")
    with Pipeline.from_yaml(GRAPH) as pipe:
        assert _read(pipe, "OMNISTAGE_TEST_MARK") == "set after the fork server started"


def test_spawn_can_be_chosen_and_a_wrong_method_is_refused(monkeypatch):
    monkeypatch.setenv("OMNISTAGE_START_METHOD", "spawn")
    with Pipeline.from_yaml(GRAPH) as pipe:
        assert _read(pipe, "OMNISTAGE_START_METHOD") == "spawn"
    monkeypatch.setenv("OMNISTAGE_START_METHOD", "fork")
    with pytest.raises(ValueError, match="OMNISTAGE_START_METHOD must be one of forkserver, spawn, not 'fork'"):
        worker_context()


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="one core has no share to give")
def test_a_busy_replica_takes_the_cores_idle_ones_leave_and_a_fixed_count_stays(tmp_path):
    text = (GRAPH.parent / "threads.yaml").read_text()
    with Pipeline.from_yaml(GRAPH.parent / "threads.yaml") as pipe:  # two replicas: a share of half the cores each
        assert {_read(pipe, "x") for _ in range(4)} == {str(os.cpu_count())}
    fixed = tmp_path / "fixed.yaml"
    fixed.write_text(text.replace("resources: {replicas: 2}", "resources: {replicas: 2, threads: 1}"))
    with Pipeline.from_yaml(fixed) as pipe:
        assert {_read(pipe, "x") for _ in range(4)} == {"1"}


def test_cores_a_fixed_replica_holds_are_not_shared(tmp_path):
    text = (GRAPH.parent / "threads.yaml").read_text().replace("resources: {replicas: 2}", "resources: {replicas: 1}")
    text += """  pinned:
    kind: python
    inputs: {text: request.messages}
    outputs: {text: response.text}
    resources: {threads: 1}
    options: {function: "tests.stages.runtime.user_functions:torch_threads", outputs: {text: text}}
"""
    graph = tmp_path / "mixed.yaml"
    graph.write_text(text)
    with Pipeline.from_yaml(graph) as pipe:
        assert _read(pipe, "x") == str(max(1, (os.cpu_count() or 1) - 1))


def test_a_replica_on_a_gpu_is_told_its_stages_share_of_that_card(tmp_path):
    from omnistage.graph.compile import compile_file
    from omnistage.stages.runtime.launcher import LocalLauncher
    plan = compile_file(GRAPH, str)
    launcher = LocalLauncher(plan, "s", str(tmp_path), "ipc://x", gpu_shares={("env", "cuda:0"): 0.4})
    assert launcher.spec("env", 3, "cuda", 1).gpu_share == 0.4  # ("cuda": the current card)
    assert launcher.spec("env", 0, "cuda:1", 1).gpu_share is None and launcher.spec("env", 0, "cpu", 1).gpu_share is None
    in_process = LocalLauncher(plan, "s", str(tmp_path), "ipc://x", in_process=True, gpu_shares={("env", "cuda:0"): 0.4})
    assert in_process.spec("env", 0, "cuda:0", 1).gpu_share is None  # (threads of this process: no cap)
