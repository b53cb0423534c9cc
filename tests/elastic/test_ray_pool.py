"""The elastic pool on Ray: read from the cluster's nodes less what the graph's replicas ask,
growing when a node joins; the scaler's add, remove and move start and stop Ray actors, and a
stage pinned to a node class is added only where that class has room."""
from pathlib import Path

import pytest
import ray
import yaml
from ray.cluster_utils import Cluster

from omnistage import Pipeline
from omnistage.elastic.ray_pool import Room, place, rooms, slots
from omnistage.stages.runtime.replicas import ReplicaState
from tests.conftest import ROOT

READY = ReplicaState.READY


def node(node_id, alive=True, **resources):
    return {"NodeID": node_id, "Alive": alive, "Resources": resources}


def test_rooms_take_each_replicas_ask_from_its_node_and_place_unplaced_ones_where_most_is_left():
    nodes = [node("a", CPU=4.0, GPU=2.0), node("b", CPU=8.0), node("gone", alive=False, CPU=64.0)]
    held = [("a", {"CPU": 1, "GPU": 1}), ("b", {"CPU": 2, "GPU": 0}), ("", {"CPU": 3, "GPU": 0}),
            ("gone", {"CPU": 8, "GPU": 0})]
    got = {room.node: room.free for room in rooms(nodes, held)}
    assert set(got) == {"a", "b"}  # (a dead node offers nothing, and what ran there holds nothing)
    assert (got["a"]["CPU"], got["a"]["GPU"]) == (3.0, 1.0)
    assert got["b"]["CPU"] == 3.0  # the unplaced ask went to b, which had most CPUs left


def test_slots_count_a_cpu_with_each_gpu_then_cpu_slots_of_threads_and_only_wanted_kinds():
    room = [Room("a", {"CPU": 5.0, "GPU": 2.0}), Room("b", {"CPU": 3.0, "GPU": 0.0}), Room("c", {"CPU": -1.0})]
    assert slots(room, {"cuda", "cpu"}, 2) == ["cuda", "cuda", "cpu", "cpu"]  # a: 2 GPUs + 3 CPUs left -> 1 slot
    assert slots(room, {"cpu"}, 2) == ["cpu", "cpu", "cpu"]  # a: 5 -> 2, b: 3 -> 1; c is over-committed
    assert slots(room, {"cuda"}, 1) == ["cuda", "cuda"]
    assert slots([Room("a", {"CPU": 0.5, "GPU": 1.0})], {"cuda"}, 1) == []  # a GPU replica needs a CPU too


def test_place_needs_one_node_with_room_for_the_whole_ask():
    room = [Room("a", {"CPU": 2.0, "GPU": 1.0}), Room("b", {"CPU": 2.0, "GPU": 1.0, "big": 1.0})]
    assert place(room, {"CPU": 2, "GPU": 2}) is None  # two ranks' GPUs on one node, not one each on two
    assert place(room, {"CPU": 1, "GPU": 1, "big": 1}).node == "b"
    assert place(room, {"CPU": 3, "GPU": 0}) is None


@pytest.fixture(scope="module")
def cluster():
    """A head of 3 logical CPUs for chat, and a node of 2 for images (node classes by custom resources)."""
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 3, "resources": {"chat_node": 8}})
    c.add_node(num_cpus=2, resources={"image_node": 8})
    c.wait_for_nodes()
    yield c
    ray.shutdown()
    c.shutdown()


@pytest.fixture
def graph(cluster, tmp_path) -> Path:
    """The elastic example on the cluster, its pool the cluster's; the test drives the scaler."""
    config = yaml.safe_load((ROOT / "examples" / "elastic.yaml").read_text())
    config["launcher"] = {"kind": "ray", "address": cluster.address}
    del config["elastic"]["devices"]
    config["elastic"]["enabled"] = False
    chat, image = config["stages"]["chat"]["resources"], config["stages"]["image"]["resources"]
    chat.update(replicas={"min": 1, "max": 4, "initial": 2}, ray_resources={"chat_node": 1})
    image.update(replicas={"min": 1, "max": 3, "initial": 1}, ray_resources={"image_node": 1})
    path = tmp_path / "elastic_ray.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def actor(pipe, replica) -> str:
    return f"omnistage-{pipe.orchestrator.session}-{replica.stage}-{replica.index}"


def started(pipe, replica) -> bool:
    """Wait until ``replica`` is ready on a node."""
    return replica is not None and pipe.orchestrator.table.wait_until(lambda: replica.state is READY, 120)


@pytest.mark.slow
def test_the_pool_is_the_clusters_room_and_actions_start_and_stop_ray_actors(cluster, graph):
    with Pipeline.from_yaml(graph) as pipe:
        table, scaler = pipe.orchestrator.table, pipe.controller.scaler
        head, image_node = {r.stage: r.node for r in table.all()}.values()
        # 5 CPUs less 3 held (chat x2 on the head, image x1 on its node, one thread each).
        assert scaler.free == ["cpu", "cpu"]
        chat = scaler.add("chat", reason="test")
        assert started(pipe, chat) and chat.node == head
        scaler.poll()
        assert scaler.free == ["cpu"]
        assert scaler.add("chat", reason="test") is None  # the slot left is on the image node
        image = scaler.add("image", reason="test")
        assert started(pipe, image) and image.node == image_node
        scaler.poll()
        assert scaler.free == []
        # A node of the chat class joins: the pool grows by its CPUs, and chat grows onto it.
        joined = cluster.add_node(num_cpus=2, resources={"chat_node": 8})
        cluster.wait_for_nodes()
        scaler.poll()
        assert scaler.free == ["cpu", "cpu"]
        fourth = scaler.add("chat", reason="test")
        assert started(pipe, fourth) and fourth.node == joined.node_id
        assert pipe.generate(prompt="hello", max_tokens=4, temperature=0, ignore_eos=True).usage["completion_tokens"] == 4
        # Removing a replica stops its actor and gives its slot back.
        assert scaler.remove("chat", reason="test")
        assert table.wait_until(lambda: len(table.of("chat")) == 3, 60)
        scaler.poll()
        assert scaler.free == ["cpu", "cpu"]
        [removed] = {actor(pipe, r) for r in (chat, fourth)} - {actor(pipe, r) for r in table.of("chat")} or [None]
        # A move drains an image replica and starts a chat one where chat may go.
        assert scaler.move("image", "chat", reason="test")
        assert table.wait_until(lambda: table.ready_count("chat") == 4 and len(table.of("image")) == 1, 120)
        assert {r.node for r in table.of("chat")} <= {head, joined.node_id}
        assert [a.kind for a in scaler.log if a.kind == "failed"] == []
        assert pipe.generate(prompt="a red dot", seed=1, modalities=["image"]).outputs["image"]
        names = [actor(pipe, r) for r in table.all()] + [removed]
    for name in names:
        with pytest.raises(ValueError):
            ray.get_actor(name, namespace="omnistage")
