"""The policy as a pure function of synthetic metric snapshots."""
from dataclasses import replace

import pytest

from omnistage.elastic.policy import PolicyState, Snapshot, StageLoad, allocate, decide, lost, queueing
from omnistage.graph.schema import ElasticConfig

# one snapshot a second; rates over 8 s, the quarter window is 3 snapshots
CONFIG = ElasticConfig(interval_s=1.0, rate_window_s=8.0, high_delay_s=1.0, low_delay_s=0.1, patience=2,
                       cooldown_s=10.0, reload_s=5.0, horizon_s=30.0, min_gain=100.0)


def load(rate, replicas, waiting=0.0, service=10.0, running=0.0, lo=1, hi=8, budget=None):
    return StageLoad(waiting=waiting, running=running, arrival_rate=rate, service_rate=service, replicas=replicas,
                     min_replicas=lo, max_replicas=hi, wait_budget_s=budget)


def run(stages_at, times, free=0, config=CONFIG, state=None):
    """decide() at each time on ``stages_at(t)``; returns the actions per snapshot."""
    state = state or PolicyState()
    return [decide(Snapshot(t, stages_at(t), free), config, state) for t in times]


def test_nothing_happens_before_a_quarter_window_of_history():
    hot = {"chat": load(rate=50, replicas=2, waiting=100), "image": load(rate=1, replicas=1)}
    out = run(lambda t: hot, [0, 1, 2], free=2)
    assert out[:2] == [[], []] and [a.kind for a in out[2]] == ["add", "add"]  # as many as are free


def test_a_unit_short_of_capacity_takes_free_devices_up_to_its_need():
    # 50 req/s at 10 req/s per replica and 80% target utilization: 7 replicas (6.25 rounded up)
    stages = {"chat": load(rate=50, replicas=2), "image": load(rate=1, replicas=1)}
    out = run(lambda t: stages, range(4), free=5)
    first = next(a for a in out if a)
    assert [a.kind for a in first] == ["add"] * 5 and {a.stage for a in first} == {"chat"}
    assert "target 7 replicas, has 2" in first[0].reason and "free" in first[0].reason


def test_without_free_devices_it_moves_from_units_with_more_than_they_need():
    stages = {"image": load(rate=30, replicas=1, waiting=50), "chat": load(rate=1, replicas=4),
              "asr": load(rate=12, replicas=2)}  # asr needs both of its replicas
    out = run(lambda t: stages, range(4))
    moves = next(a for a in out if a)
    assert {a.kind for a in moves} == {"move"} and {a.stage for a in moves} == {"image"}
    assert [a.donor for a in moves] == ["chat"] * 3  # chat keeps its one needed replica; asr gives none
    assert "saves" in moves[0].reason


def test_no_move_from_a_unit_at_its_minimum():
    stages = {"image": load(rate=30, replicas=1, waiting=200), "chat": load(rate=0, replicas=1)}
    assert run(lambda t: stages, range(5)) == [[]] * 5


def test_a_move_must_save_more_than_it_costs():
    # A slight overload: one more replica helps a little, against a 60 s reload it does not pay.
    stages = {"image": load(rate=10.5, replicas=1, waiting=5), "chat": load(rate=10, replicas=2)}
    expensive = replace(CONFIG, reload_s=60.0)
    assert all(a == [] for a in run(lambda t: stages, range(5), config=expensive))
    cheap = replace(CONFIG, reload_s=0.5)
    assert any(a and a[0].kind == "move" and a[0].donor == "chat" for a in run(lambda t: stages, range(5), config=cheap))


def test_a_move_between_groups_of_one_stage_costs_no_reload():
    # The overload above, against a 60 s reload: another stage's replica does not pay, a replica
    # of the other modality group of the same stage does (it serves its new group at once).
    expensive = replace(CONFIG, reload_s=60.0)
    stages = {"llm/multimodal": load(rate=10.5, replicas=1, waiting=5), "tts": load(rate=10, replicas=2),
              "llm/text": load(rate=10, replicas=2)}
    moves = [a for acts in run(lambda t: stages, range(5), config=expensive) for a in acts]
    assert moves and {(a.kind, a.stage, a.donor) for a in moves} == {("move", "llm/multimodal", "llm/text")}
    assert "no reload" in moves[0].reason


def test_a_burst_moves_nothing_but_a_lasting_shift_does():
    def rates(t, shift_at, burst=()):
        chat = 60.0 if (t >= shift_at or t in burst) else 10.0
        return {"chat": load(rate=chat, replicas=2), "image": load(rate=5, replicas=6)}
    config = replace(CONFIG, rate_window_s=20.0)  # the quarter window: 5 snapshots
    burst = run(lambda t: rates(t, 10**9, burst=(28, 29)), range(45), config=config)
    assert not any(a.stage == "chat" for acts in burst for a in acts)  # two seconds at 6x
    shift = run(lambda t: rates(t, 28), range(45), config=config)
    when = [t for t, acts in enumerate(shift) if any(a.stage == "chat" for a in acts)]
    assert when and 28 <= when[0] <= 32  # within the quarter window


def test_cooldown_stops_a_reversal_but_not_further_growth():
    state = PolicyState()
    grow = {"chat": load(rate=30, replicas=1), "image": load(rate=1, replicas=4)}
    first = run(lambda t: grow, range(4), state=state)
    gave_at = next(t for t, a in enumerate(first) if a)
    assert {(a.kind, a.stage, a.donor) for a in first[gave_at]} == {("move", "chat", "image")}
    more = {"chat": load(rate=45, replicas=4), "image": load(rate=1, replicas=1)}
    again = run(lambda t: more, range(4, 7), free=2, state=state)
    assert any(a and a[0].kind == "add" and a[0].stage == "chat" for a in again)  # growth goes on at once
    back = {"chat": load(rate=1, replicas=6), "image": load(rate=60, replicas=1, waiting=100)}
    out = run(lambda t: back, range(7, 20), state=state)
    when = [t for t, a in zip(range(7, 20), out) if a]
    assert when and when[0] >= gave_at + CONFIG.cooldown_s  # image gave: it waits before it takes
    assert out[when[0] - 7][0].stage == "image"


def test_a_unit_without_traffic_gives_back_after_a_whole_window_never_below_its_minimum():
    stages = {"chat": load(rate=0, replicas=3, lo=2), "image": load(rate=2, replicas=1)}
    out = run(lambda t: stages, range(12))
    removes = [(t, a[0]) for t, a in enumerate(out) if a]
    assert removes and removes[0][1].kind == "remove" and removes[0][1].stage == "chat" and removes[0][0] >= 7
    at_min = {"chat": load(rate=0, replicas=2, lo=2), "image": load(rate=2, replicas=1)}
    assert all(a == [] for a in run(lambda t: at_min, range(20)))


def test_allocate_meets_every_need_at_target_utilization_when_it_can():
    loads = {"a": load(rate=40, replicas=1), "b": load(rate=8, replicas=1)}
    assert allocate(loads, 8, CONFIG) == {"a": 5 + 1, "b": 2} or allocate(loads, 8, CONFIG) == {"a": 5, "b": 3}
    assert allocate(loads, 7, CONFIG) == {"a": 5, "b": 2}


def test_allocate_falls_back_to_full_utilization_then_to_least_overload():
    loads = {"a": load(rate=40, replicas=1), "b": load(rate=8, replicas=1)}
    assert allocate(loads, 5, CONFIG) == {"a": 4, "b": 1}  # 5 + 2 at 80% do not fit; 4 + 1 at 100% do
    over = allocate({"a": load(rate=90, replicas=1), "b": load(rate=30, replicas=1)}, 6, CONFIG)
    assert sum(over.values()) == 6 and over["a"] > over["b"] >= 1


def test_queueing_of_a_growing_backlog():
    # 5 req/s too many for 30 s: the backlog grows to 150, 2250 request-seconds of fluid queueing
    fluid = queueing(load(rate=15, replicas=1, waiting=0), 1, 30.0)
    assert fluid == pytest.approx(0.5 * 5 * 30 ** 2 + 0.99 ** 2 / 0.01 * 30)
    helped = queueing(load(rate=15, replicas=1, waiting=0), 1, 30.0, later=2, after_s=10.0)
    assert helped < fluid


def test_lost_requests_of_a_queue():
    assert lost(load(rate=15, replicas=1), 1, 30.0) == 0  # no SLO known: nothing counts as lost
    # 5/s more than it serves: the backlog passes the 10 its 1 s budget covers after 2 s, and
    # it never drains: four horizons more of arrivals count as late
    assert lost(load(rate=15, replicas=1, budget=1.0), 1, 30.0) == pytest.approx(15 * 28 + 15 * 4 * 30)
    assert lost(load(rate=5, replicas=1, budget=1.0), 1, 30.0) == 0
    # 50 queued drain at 5/s: arrivals find more than the 10 a second's budget serves for 8 s
    assert lost(load(rate=5, replicas=1, waiting=50, budget=1.0), 1, 30.0) == pytest.approx(5 * 8)
    # 200 queued outlast the horizon: 30 s of late arrivals, then 8 s more while the rest drains;
    # a second replica drains the part beyond its budget (20) within 12 s
    assert lost(load(rate=5, replicas=1, waiting=200, budget=1.0), 1, 30.0) == pytest.approx(5 * 30 + 5 * 8)
    assert lost(load(rate=5, replicas=1, waiting=200, budget=1.0), 2, 30.0) == pytest.approx(5 * 12)
    # a second replica after 2 s: the 40 left drain at 15/s below the 20 its budget serves in 4/3 s
    helped = lost(load(rate=5, replicas=1, waiting=50, budget=1.0), 1, 30.0, later=2, after_s=2.0)
    assert helped == pytest.approx(5 * 2 + 5 * 4 / 3)


def test_allocate_gives_the_dear_unit_only_its_minimum_when_devices_cannot_serve_both():
    """Chats are cheap and many, images dear and few: 9 devices do not serve both at the target
    utilization. Kept within their SLO, the chats are worth more requests; by queueing alone the
    images' long waits would draw a device from them."""
    loads = {"chat": load(rate=60, replicas=4, budget=1.0), "image": load(rate=3, replicas=4, service=0.5, budget=3.0)}
    assert allocate(loads, 9, CONFIG) == {"chat": 8, "image": 1}
    by_queueing = {s: replace(v, wait_budget_s=None) for s, v in loads.items()}
    assert allocate(by_queueing, 9, CONFIG) == {"chat": 7, "image": 2}


def test_a_move_that_keeps_more_requests_within_their_slo_pays():
    """The chats run at 86% of their capacity: by queueing they have enough, but their bursts
    would make chats late, and they are many; the images, few and already late, give one up."""
    stages = {"chat": load(rate=60, replicas=7, budget=1.0), "image": load(rate=2, replicas=2, service=0.5, waiting=10,
                                                                             budget=3.0)}
    moves = [a for acts in run(lambda t: stages, range(6)) for a in acts]
    assert moves and (moves[0].kind, moves[0].stage, moves[0].donor) == ("move", "chat", "image")
    assert "requests within their SLO" in moves[0].reason
    by_queueing = {s: replace(v, wait_budget_s=None) for s, v in stages.items()}
    assert all(a == [] for a in run(lambda t: by_queueing, range(6)))
