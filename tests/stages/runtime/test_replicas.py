"""The replica table on its own: states, picking, draining, removal and readiness."""
import threading

import pytest

from omnistage.errors import Overloaded
from omnistage.stages.runtime.replicas import ReplicaState, ReplicaTable


class FakeRuntime:
    def __init__(self, alive=True):
        self.alive = alive

    def is_alive(self):
        return self.alive

    def stop(self, timeout):
        self.alive = False

    def kill(self):
        self.alive = False

    def exit_reason(self):
        return "running" if self.alive else "killed by SIGKILL"


def table_with(*stages):
    table = ReplicaTable(stages)
    return table, {s: table.add(s, lambda i: FakeRuntime()) for s in stages}


def test_indices_are_never_reused_and_removed_replicas_leave():
    table, _ = table_with("chat")
    second = table.add("chat", lambda i: FakeRuntime())
    assert [r.index for r in table.of("chat")] == [0, 1]
    table.remove(second)
    third = table.add("chat", lambda i: FakeRuntime())
    assert third.index == 2 and [r.name for r in table.of("chat")] == ["chat[0]", "chat[2]"]
    assert table.get("chat", 1) is None and table.get("chat", 2) is third


def test_pick_takes_the_least_loaded_ready_replica_of_the_group_and_records_the_request():
    table = ReplicaTable(["chat"])
    a, b, c = (table.add("chat", lambda i: FakeRuntime(), group=g) for g in ("text", "text", "multimodal"))
    for r in (a, b, c):
        table.set_state(r, ReplicaState.READY, address=f"ipc://{r.index}")
    assert table.pick("chat", "r1", queue_depth=8, group="text") == [a]
    assert table.pick("chat", "r2", queue_depth=8, group="text") == [b]
    assert table.pick("chat", "r3", queue_depth=8, group="multimodal") == [c]
    assert a.inflight == {"r1"} and b.inflight == {"r2"}
    table.release("r1", [a])
    assert a.inflight == set()
    table.set_group(c, "text")  # no multimodal replica left: multimodal requests go to any, least loaded
    assert table.pick("chat", "r4", queue_depth=8, group="multimodal") == [a]


def test_pick_refuses_without_a_ready_replica_or_capacity():
    table, reps = table_with("chat")
    with pytest.raises(Overloaded) as info:
        table.pick("chat", "r1", queue_depth=1)
    assert info.value.status == 503
    table.set_state(reps["chat"], ReplicaState.READY)
    table.pick("chat", "r1", queue_depth=1)
    with pytest.raises(Overloaded) as info:
        table.pick("chat", "r2", queue_depth=1)
    assert info.value.status == 429


def test_a_draining_replica_is_never_picked_and_is_drained_once_empty():
    table, reps = table_with("chat")
    rep = reps["chat"]
    table.set_state(rep, ReplicaState.READY)
    table.pick("chat", "r1", queue_depth=8)
    table.set_state(rep, ReplicaState.DRAINING)
    with pytest.raises(Overloaded):
        table.pick("chat", "r2", queue_depth=8)
    assert table.take_drained() == []
    table.release("r1", [rep])
    assert table.take_drained() == [rep] and table.of("chat") == []  # taken out: only one caller stops it
    assert table.take_drained() == [] and not table.remove(rep)


def test_a_transition_happens_only_from_the_state_expected():
    table, reps = table_with("chat")
    rep = reps["chat"]
    table.set_state(rep, ReplicaState.DEAD, error="gone")
    assert not table.transition(rep, ReplicaState.READY, ReplicaState.DRAINING)  # a drain never revives the dead
    assert rep.state is ReplicaState.DEAD


def test_a_replica_is_listed_before_it_is_launched_and_a_failed_launch_leaves_it_dead():
    table = ReplicaTable(["chat"])
    seen = []

    def launch(index):
        seen.append([r.index for r in table.of("chat")])
        return FakeRuntime()
    replica = table.add("chat", launch)
    assert seen == [[0]] and isinstance(replica.runtime, FakeRuntime)

    def broken(index):
        raise OSError("no such device")
    with pytest.raises(OSError):
        table.add("chat", broken)
    assert table.of("chat")[-1].state is ReplicaState.DEAD
    assert table.readiness()["chat"] == "loading"


def test_readiness_says_why_per_stage():
    table, reps = table_with("vision", "chat", "speak")
    assert table.readiness() == {"vision": "loading", "chat": "loading", "speak": "loading"}
    table.set_state(reps["vision"], ReplicaState.READY)
    table.set_state(reps["chat"], ReplicaState.DEAD, error="Traceback ...\nOSError: no such checkpoint")
    table.remove(reps["speak"])
    assert table.readiness() == {"vision": None, "chat": "no ready replica (chat[0] died: OSError: no such checkpoint)",
                                 "speak": "no ready replica"}


def test_wait_until_wakes_on_a_change_of_state():
    table, reps = table_with("chat")
    timer = threading.Timer(0.05, table.set_state, (reps["chat"], ReplicaState.READY))
    timer.start()
    assert table.wait_until(lambda: table.ready_count("chat") == 1, timeout=5)
    assert not table.wait_until(lambda: table.ready_count("chat") == 2, timeout=0.05)
