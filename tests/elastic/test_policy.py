"""The policy as a pure function of synthetic metric snapshots."""
from omnistage.elastic.policy import Action, PolicyState, Snapshot, StageLoad, decide
from omnistage.graph.schema import ElasticConfig

CONFIG = ElasticConfig(high_delay_s=1.0, low_delay_s=0.1, patience=2, cooldown_s=10.0, reload_s=5.0, horizon_s=30.0)


def load(waiting, rate, replicas, service=10.0, running=0.0, lo=1, hi=4):
    return StageLoad(waiting=waiting, running=running, arrival_rate=rate, service_rate=service, replicas=replicas,
                     min_replicas=lo, max_replicas=hi)


def run(snaps, config=CONFIG):
    state = PolicyState()
    return [decide(s, config, state) for s in snaps]


def test_a_hot_stage_takes_a_free_device_after_the_hysteresis():
    hot = {"chat": load(waiting=100, rate=50, replicas=2), "image": load(waiting=0, rate=1, replicas=1)}
    out = run([Snapshot(t, hot, free_devices=1) for t in (0.0, 1.0)])
    assert out[0] == []  # one hot snapshot is not enough (patience 2)
    assert [a.kind for a in out[1]] == ["add"] and out[1][0].stage == "chat" and "free" in out[1][0].reason


def test_without_free_devices_it_moves_one_from_the_idlest_stage_that_can_spare_it():
    stages = {"image": load(waiting=200, rate=30, replicas=1),
              "chat": load(waiting=0, rate=1, replicas=3), "asr": load(waiting=5, rate=2, replicas=2)}
    out = run([Snapshot(t, stages, 0) for t in (0.0, 1.0)])
    action = out[1][0]
    assert action.kind == "move" and action.stage == "image" and action.donor == "chat"
    # as many as image needs (~37 req/s at 80% of 10 req/s per replica), while each move pays
    assert len(out[1]) >= 2 and all(a.stage == "image" and a.kind == "move" for a in out[1])
    assert [a.donor for a in out[1]][:2] == ["chat", "chat"]


def test_no_move_when_the_donor_would_lose_more_or_is_at_its_minimum():
    busy = {"image": load(waiting=20, rate=1, replicas=1), "chat": load(waiting=25, rate=20, replicas=2)}
    assert run([Snapshot(t, busy, 0) for t in (0.0, 1.0)])[1] == []  # chat's loss outweighs image's gain
    minimal = {"image": load(waiting=200, rate=30, replicas=1), "chat": load(waiting=0, rate=0, replicas=1)}
    assert run([Snapshot(t, minimal, 0) for t in (0.0, 1.0)])[1] == []


def test_no_move_when_the_reload_costs_more_than_it_saves():
    # A slight overload that one more replica barely helps, against a 60 s reload.
    stages = {"image": load(waiting=12, rate=0.5, replicas=1), "chat": load(waiting=0, running=8, rate=0.5, replicas=2)}
    expensive = ElasticConfig(high_delay_s=1.0, low_delay_s=0.1, patience=1, cooldown_s=0, reload_s=60.0, horizon_s=30)
    assert run([Snapshot(0.0, stages, 0)], expensive) == [[]]
    cheap = ElasticConfig(high_delay_s=1.0, low_delay_s=0.1, patience=1, cooldown_s=0, reload_s=0.5, horizon_s=30)
    assert [a.kind for a in run([Snapshot(0.0, stages, 0)], cheap)[0]] == ["move"]


def test_cooldown_spaces_actions_on_a_stage():
    hot = {"chat": load(waiting=100, rate=50, replicas=1), "image": load(waiting=0, rate=0, replicas=1)}
    state = PolicyState()
    acts = [decide(Snapshot(t, hot, free_devices=3), CONFIG, state) for t in (0, 1, 2, 5, 10, 11, 12)]
    kinds = [a[0].kind if a else None for a in acts]
    assert kinds == [None, "add", None, None, None, "add", None]  # 10 s between actions


def test_an_idle_stage_gives_a_replica_back_but_never_below_its_minimum():
    idle = {"chat": load(waiting=0, rate=0.1, replicas=3, lo=2), "image": load(waiting=3, rate=1, replicas=1)}
    state = PolicyState()
    first = [decide(Snapshot(t, idle, 0), CONFIG, state) for t in (0, 1)]
    assert first[1] == [Action("remove", "chat", reason=first[1][0].reason)]
    at_min = {"chat": load(waiting=0, rate=0.1, replicas=2, lo=2), "image": load(waiting=3, rate=1, replicas=1)}
    assert [decide(Snapshot(t, at_min, 0), CONFIG, state) for t in (20, 21, 22)] == [[], [], []]


def test_the_hottest_stage_goes_first_and_max_replicas_caps_growth():
    stages = {"a": load(waiting=30, rate=10, replicas=1), "b": load(waiting=90, rate=10, replicas=1),
              "c": load(waiting=500, rate=10, replicas=4, hi=4)}
    out = run([Snapshot(t, stages, free_devices=1) for t in (0.0, 1.0)])
    assert out[1][0].stage == "b"  # c is hotter but already at its maximum
