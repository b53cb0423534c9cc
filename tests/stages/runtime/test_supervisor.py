"""The supervisor's restart policy, on a fake clock with fake replica runtimes (no processes)."""
from omnistage.graph.schema import SupervisorConfig
from omnistage.stages.runtime.replicas import ReplicaState, ReplicaTable
from omnistage.stages.runtime.supervisor import Supervisor
from tests.stages.runtime.test_replicas import FakeRuntime


class World:
    def __init__(self, **config):
        self.now = 0.0
        self.table = ReplicaTable(["llm"])
        self.started = []
        self.sup = Supervisor(self.table, self.start, SupervisorConfig(**config), clock=lambda: self.now)

    def start(self, stage, device, threads, group):
        self.started.append((stage, device, threads, group))
        return self.table.add(stage, lambda i: FakeRuntime(), device, group, threads)

    def ready(self, replica):
        self.table.set_state(replica, ReplicaState.READY, address="ipc://x")

    def crash(self):
        """The ready replica dies, as the orchestrator's monitor reports it."""
        [replica] = self.table.of("llm", state=ReplicaState.READY)
        replica.runtime.alive = False
        assert self.table.transition(replica, ReplicaState.READY, ReplicaState.DEAD)
        self.table.set_state(replica, ReplicaState.DEAD, error="its process exited (killed by SIGKILL)")
        self.sup.replace(replica)
        return replica

    def advance(self, seconds):
        self.now += seconds
        self.sup.poll()
        for r in self.table.of("llm", state=ReplicaState.STARTING):
            self.ready(r)


def test_first_restart_is_immediate_with_the_same_slot_and_the_reason_is_kept():
    w = World()
    first = w.start("llm", "cpu", 2, "text")
    w.started.clear()
    w.ready(first)
    dead = w.crash()
    assert w.table.readiness()["llm"] == "no ready replica (llm[0] died: its process exited (killed by SIGKILL); " \
                                         "restarting now)"
    w.advance(0.1)
    assert w.started == [("llm", "cpu", 2, "text")]
    assert w.table.get("llm", dead.index) is None and w.table.ready_count("llm") == 1
    [restart] = w.sup.log
    assert (restart.stage, restart.replica, restart.new_replica) == ("llm", 0, 1)
    assert restart.reason == "its process exited (killed by SIGKILL)"


def test_back_off_doubles_and_the_cap_waits_for_the_window():
    w = World(max_restarts=3, window_s=60, backoff_s=1, max_backoff_s=30)
    w.ready(w.start("llm", "cpu", 1, None))
    times = []
    for _ in range(4):
        w.crash()
        count = len(w.sup.log)
        while len(w.sup.log) == count:
            w.advance(0.25)
        times.append(w.now)
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert times[0] == 0.25  # the first poll after the crash
    assert 1 <= gaps[0] < 1.5 and 2 <= gaps[1] < 2.5  # back-off 1 s, then 2 s
    assert times[3] >= times[0] + 60  # the 4th restart within the window waits for the oldest to leave it


def test_a_replacement_that_fails_to_start_is_retried_with_back_off():
    w = World(backoff_s=1)
    w.ready(w.start("llm", "cpu", 1, None))
    w.crash()
    w.sup.poll()  # the replacement is launched...
    [new] = w.table.of("llm", state=ReplicaState.STARTING)
    new.runtime.alive = False  # ...and its process exits before Ready
    w.sup.poll()
    assert new.state is ReplicaState.DEAD and "restarting in 1.0 s" in new.error
    w.advance(1.0)
    assert w.table.ready_count("llm") == 1 and len(w.sup.log) == 2


def test_disabled_supervisor_leaves_the_dead_alone():
    w = World(enabled=False)
    w.ready(w.start("llm", "cpu", 1, None))
    w.crash()
    w.advance(100)
    assert w.sup.log == [] and w.table.ready_count("llm") == 0
