"""Graphs served on a Ray cluster of three simulated nodes on this machine (``ray.cluster_utils``,
one raylet each): stages pinned to different nodes by custom resources give what one host gives;
tensors between nodes go as ZeroMQ frames, within one node through shared memory; a killed actor
fails its requests and is started again; closing leaves no actor behind."""
import time
from pathlib import Path

import numpy as np
import pytest
import ray
import yaml
from ray.cluster_utils import Cluster

from omnistage import Pipeline
from omnistage.connectors.shm import SHM_DIR, segment_name
from omnistage.errors import StageDeadError
from omnistage.stages.runtime.replicas import ReplicaState
from tests.conftest import ROOT
from tests.stages.runtime.test_admission import IMAGE, picture, png, text

NODES = ("node_a", "node_b", "node_c")


@pytest.fixture(scope="module")
def cluster():
    # Logical CPUs: a replica asks for its threads; the machine's two cores are shared as ever.
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 4, "resources": {NODES[0]: 8}})
    for name in NODES[1:]:  # ("pool": a node class of two)
        c.add_node(num_cpus=4, resources={name: 8, "pool": 8})
    c.wait_for_nodes()
    yield c
    ray.shutdown()
    c.shutdown()


def spread(example: str, nodes: dict[str, str], address: str, tmp_path: Path, **extra) -> Path:
    """``examples/<example>`` on the Ray launcher, each stage pinned to its node."""
    graph = yaml.safe_load((ROOT / "examples" / example).read_text())
    graph["launcher"] = {"kind": "ray", "address": address}
    graph["transport"] = {"shm_threshold_kb": 1}  # (the tiny models' tensors are small)
    for stage, node in nodes.items():
        graph["stages"][stage].setdefault("resources", {})["ray_resources"] = {node: 1}
    graph.update(extra)
    path = tmp_path / example
    path.write_text(yaml.safe_dump(graph))
    return path


def nodes_of(pipe) -> dict[str, str]:
    return {r.stage: r.node for r in pipe.orchestrator.table.all()}


def ring_exists(pipe, replica: str) -> bool:
    return (SHM_DIR / segment_name(pipe.orchestrator.session, replica)).exists()


def test_encode_prefill_decode_on_three_nodes_equals_one_host(cluster, tmp_path, vl_reference):
    """Each stage on its own node: the image's embeddings and the prompt's KV cross nodes as
    frames (no stage makes a shared-memory ring), and the answer is one host's and HF's."""
    content, image = [IMAGE, text("What is in this picture?")], picture(7, 56, 84)
    ask = dict(messages=[{"role": "user", "content": content}], images=[png(image)], temperature=0, max_tokens=12)
    graph = spread("vl_chat_epd.yaml", {"vision": "node_b", "prefill": "node_a", "decode": "node_c"},
                   cluster.address, tmp_path)
    with Pipeline.from_yaml(graph) as pipe:
        placed = nodes_of(pipe)
        got = pipe.generate(**ask)
        assert len(set(placed.values())) == 3
        assert not ring_exists(pipe, "vision-0") and not ring_exists(pipe, "prefill-0")
    with Pipeline.from_yaml(ROOT / "examples" / "vl_chat_epd.yaml", in_process=True) as one_host:
        alone = one_host.generate(**ask)
    assert got.text == alone.text == vl_reference(content, [image])[1]
    assert got.meta["vision"]["encoded_items"] == 1


def test_stages_on_one_node_pass_tensors_through_shared_memory(cluster, tmp_path):
    graph = spread("vl_chat_epd.yaml", {"vision": "node_b", "prefill": "node_b", "decode": "node_b"},
                   cluster.address, tmp_path)
    with Pipeline.from_yaml(graph) as pipe:
        content = [IMAGE, text("Describe it")]
        pipe.generate(messages=[{"role": "user", "content": content}], images=[png(picture(8, 56, 56))],
                      temperature=0, max_tokens=4)
        assert len(set(nodes_of(pipe).values())) == 1
        assert ring_exists(pipe, "vision-0") and ring_exists(pipe, "prefill-0")


def test_text_encode_diffusion_vae_decode_spread_equals_one_host(cluster, tmp_path):
    ask = dict(prompt="a red square on a blue field", seed=3, num_inference_steps=3, output_format="raw")
    graph = spread("text_to_image_split.yaml", {"text": "node_c", "denoise": "node_a", "decode": "node_b"},
                   cluster.address, tmp_path)
    with Pipeline.from_yaml(graph) as pipe:
        assert len(set(nodes_of(pipe).values())) == 3
        got = pipe.generate(**ask).outputs["image"]["data"].numpy()
    with Pipeline.from_yaml(ROOT / "examples" / "text_to_image_split.yaml", in_process=True) as one_host:
        alone = one_host.generate(**ask).outputs["image"]["data"].numpy()
    np.testing.assert_allclose(got, alone, atol=1e-5)  # (the two runs' thread counts differ)


def test_a_killed_actor_fails_its_requests_is_restarted_and_no_actor_outlives_the_pipeline(cluster, tmp_path):
    graph = spread("text_to_image_split.yaml", {"denoise": "node_c"}, cluster.address, tmp_path,
                   supervisor={"backoff_s": 0.1})
    with Pipeline.from_yaml(graph) as pipe:
        names = [f"omnistage-{pipe.orchestrator.session}-{r.stage}-{r.index}" for r in pipe.orchestrator.table.all()]
        handle = pipe.submit(prompt="a long one", num_inference_steps=200, height=128, width=128, seed=1)
        first = next(iter(handle.events(timeout=60)))  # a progress chunk: the denoiser holds it
        assert first.modality == "progress"
        killed = time.monotonic()
        ray.kill(ray.get_actor(f"omnistage-{pipe.orchestrator.session}-denoise-0", namespace="omnistage"))
        with pytest.raises(StageDeadError, match="denoise"):
            handle.result(timeout=30)
        assert time.monotonic() - killed < 10
        table = pipe.orchestrator.table
        assert table.wait_until(lambda: table.ready_count("denoise") == 1, 120)
        [again] = table.of("denoise", state=ReplicaState.READY)
        assert again.index == 1 and again.node == nodes_of(pipe)["denoise"]
        assert pipe.generate(prompt="after the restart", num_inference_steps=2, seed=2).outputs["image"]
        names.append(f"omnistage-{pipe.orchestrator.session}-denoise-1")
    for name in names:
        with pytest.raises(ValueError):
            ray.get_actor(name, namespace="omnistage")


def test_a_lost_node_fails_its_requests_and_its_stage_restarts_on_another(cluster, tmp_path):
    """(Last: it takes a node out of the module's cluster.) The denoiser may run on either node of
    its class; the node it runs on goes away mid-request."""
    graph = spread("text_to_image_split.yaml", {"denoise": "pool"}, cluster.address, tmp_path,
                   supervisor={"backoff_s": 0.1})
    with Pipeline.from_yaml(graph) as pipe:
        lost = nodes_of(pipe)["denoise"]
        handle = pipe.submit(prompt="a long one", num_inference_steps=200, height=128, width=128, seed=1)
        assert next(iter(handle.events(timeout=60))).modality == "progress"
        removed = time.monotonic()
        cluster.remove_node(next(n for n in cluster.worker_nodes if n.node_id == lost), allow_graceful=False)
        with pytest.raises(StageDeadError, match="denoise"):
            handle.result(timeout=60)
        assert time.monotonic() - removed < 15
        table = pipe.orchestrator.table
        assert table.wait_until(lambda: table.ready_count("denoise") == 1, 120)
        assert nodes_of(pipe)["denoise"] != lost
        assert pipe.generate(prompt="after the restart", num_inference_steps=2, seed=2).outputs["image"]
