import re

import pytest

from omnistage.checkpoints import resolve_model
from omnistage.errors import GraphConfigError
from omnistage.graph.compile import compile_text
from omnistage.graph.placement import free_devices

BASE = """
name: pool
models:
  lm: {path: "tiny:qwen2"}
stages:
  chat:
    kind: ar
    model: lm
    inputs: {prompt: request.prompt}
    outputs: {text: response.text}
    resources: RESOURCES
elastic:
  devices: DEVICES
"""


def plan(resources, devices="[cpu, cpu, cpu]"):
    return compile_text(BASE.replace("RESOURCES", resources).replace("DEVICES", devices), resolve_model)


def test_replica_ranges_take_pool_devices_and_leave_the_rest_free():
    p = plan("{replicas: {min: 1, max: 3, initial: 2}}")
    assert [s.device for s in p.placement["chat"]] == ["cpu", "cpu"]
    assert free_devices(p.config, p.placement) == ["cpu"]
    res = p.stages["chat"].config.resources
    assert (res.min_replicas, res.max_replicas, res.initial_replicas) == (1, 3, 2)


def test_gpu_pool_devices_are_assigned_by_name():
    p = plan("{device: cuda, replicas: {min: 1, max: 2}}", "[cuda:0, cuda:1]")
    assert [s.device for s in p.placement["chat"]] == ["cuda:0"]
    assert free_devices(p.config, p.placement) == ["cuda:1"]


def test_groups_place_their_replicas():
    p = plan("{groups: {text: 1, multimodal: {min: 1, max: 2, initial: 2}}}")
    assert [s.group for s in p.placement["chat"]] == ["text", "multimodal", "multimodal"]


@pytest.mark.parametrize("resources, devices, words", [
    ("{replicas: 4}", "[cpu, cpu]", "no free 'cpu' device"),
    ("{replicas: {min: 3, max: 2}}", "[cpu]", "min (3) must be <= max (2)"),
    ("{groups: {gpu: 1}}", "[cpu]", "unknown group 'gpu'"),
    ("{replicas: 1}", "[tpu]", "elastic.devices[0]"),
])
def test_bad_pools_and_ranges_are_reported(resources, devices, words):
    with pytest.raises(GraphConfigError, match=re.escape(words)):
        plan(resources, devices)



def ray_plan(resources="{replicas: 2}", extra=""):
    """BASE with ``extra`` for its elastic section."""
    text = BASE.replace("RESOURCES", resources).replace("elastic:\n  devices: DEVICES", extra)
    return compile_text(text, resolve_model)


def test_an_elastic_graph_on_ray_without_a_pool_gives_cpu_replicas_a_slot_of_elastic_threads():
    p = ray_plan(extra="launcher: ray\nelastic: {threads: 3}")
    assert [s.threads for s in p.placement["chat"]] == [3, 3]
    assert free_devices(p.config, p.placement) == []  # (the pool is read from the cluster when it runs)


def test_serve_ray_places_as_the_graphs_own_launcher_section_does():
    from omnistage.graph.compile import with_launcher
    from omnistage.graph.schema import LauncherConfig
    local = ray_plan(extra="elastic: {threads: 3}")
    assert with_launcher(local, LauncherConfig("ray")).placement == ray_plan(extra="launcher: ray\nelastic: {threads: 3}").placement


def test_ray_resources_need_the_ray_launcher_and_are_not_cpus_or_gpus():
    with pytest.raises(GraphConfigError, match=r"stages\.chat\.resources\.ray_resources.*set launcher: ray"):
        ray_plan("{ray_resources: {big: 1}}")
    with pytest.raises(GraphConfigError, match=r"ray_resources\.GPU: CPUs and GPUs come from threads and device"):
        ray_plan("{ray_resources: {GPU: 1}}", "launcher: ray")
