"""Building a replica's stage: the kind's factory, and the capabilities the kind declares."""
import dataclasses

import pytest

from omnistage.checkpoints import resolve_model
from omnistage.graph.compile import compile_text
from omnistage.graph.strict import frozen_dict
from omnistage.stages.kinds.python import PythonStage
from omnistage.stages.worker.main import build_stage

GRAPH = """
name: one
stages:
  shout:
    kind: python
    inputs: {text: request.prompt}
    outputs: {text: response.text}
    options: {function: "omnistage.examples_lib:shout", outputs: {text: text}}
"""


def not_a_stage(stage, device):
    return f"{stage.name} on {device}"


def with_kind(plan, **changes):
    stage = plan.stages["shout"]
    kind = dataclasses.replace(stage.kind, **changes)
    return dataclasses.replace(plan, stages=frozen_dict({"shout": dataclasses.replace(stage, kind=kind)}))


def test_build_stage_calls_the_kinds_factory():
    assert isinstance(build_stage(compile_text(GRAPH, resolve_model), "shout", "cpu"), PythonStage)


def test_a_stage_without_a_capability_its_kind_declares_is_refused():
    plan = compile_text(GRAPH, resolve_model)
    with pytest.raises(TypeError, match="is probed for its prefix cache, but PythonStage is not a ProbingStage"):
        build_stage(with_kind(plan, probes=True), "shout", "cpu")
    with pytest.raises(TypeError, match="built a str, not a Stage"):
        build_stage(with_kind(plan, factory="tests.stages.worker.test_main:not_a_stage"), "shout", "cpu")
    stage = plan.stages["shout"]
    streamed = dataclasses.replace(stage, inputs=tuple(dataclasses.replace(p, streaming=True) for p in stage.inputs))
    with pytest.raises(TypeError, match="has a streamed input, but PythonStage is not a StreamingInputStage"):
        build_stage(dataclasses.replace(plan, stages=frozen_dict({"shout": streamed})), "shout", "cpu")
