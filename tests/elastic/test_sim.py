from omnistage.graph.schema import ElasticConfig
from omnistage.elastic.sim import Arrival, StageModel, best_static, shifting_trace, simulate

FAST = StageModel("chat", base_s=0.01, per_request_s=0.001, steps=10, max_batch=8)
SLOW = StageModel("image", base_s=0.02, per_request_s=0.01, steps=20, max_batch=4)
POLICY = ElasticConfig(high_delay_s=0.5, low_delay_s=0.05, patience=3, cooldown_s=3.0, reload_s=1.0, horizon_s=20.0)


def test_an_unloaded_request_takes_its_steps_at_batch_one():
    out = simulate([FAST, SLOW], {"chat": 1, "image": 1}, [Arrival(0.0, "chat"), Arrival(0.0, "image")], 5.0,
                   dt=0.001)
    assert abs(out.latencies["chat"][0] - 10 * 0.011) < 0.01
    assert abs(out.latencies["image"][0] - 20 * 0.03) < 0.01


def test_batching_shares_steps():
    out = simulate([FAST, SLOW], {"chat": 1, "image": 1}, [Arrival(0.0, "chat")] * 8, 5.0, dt=0.001)
    assert len(out.latencies["chat"]) == 8 and max(out.latencies["chat"]) < 10 * 0.018 + 0.01


def device_demand(chat_share, devices=6, load=0.7):
    """Arrival rates that keep ``load`` of the devices busy, ``chat_share`` of them on chat."""
    return {"chat": load * devices * chat_share * FAST.capacity,
            "image": load * devices * (1 - chat_share) * SLOW.capacity}


def test_elastic_follows_a_shift_and_beats_the_split_it_started_from():
    # image-heavy first, then chat-heavy: the controller moves devices both ways
    trace = shifting_trace(60.0, [device_demand(0.2), device_demand(0.8)], seed=1)
    start = {"chat": 3, "image": 3}
    elastic = simulate([FAST, SLOW], start, trace, 60.0, policy=POLICY, dt=0.02)
    moves = [(t, a.stage) for t, a in elastic.actions if a.kind == "move"]
    assert moves[0][1] == "image" and moves[0][0] < 10  # image-heavy phase: devices go to image
    assert any(stage == "chat" and t > 30 for t, stage in moves)  # then back to chat
    slo = {"chat": 1.0, "image": 3.0}
    statics = [simulate([FAST, SLOW], {"chat": c, "image": 6 - c}, trace, 60.0, dt=0.02) for c in range(1, 6)]
    assert elastic.goodput(slo) > 1.5 * statics[2].goodput(slo)  # the even split it started from
    assert elastic.p99() < min(s.p99() for s in statics)
    assert sum(len(v) for v in elastic.latencies.values()) <= len(trace)  # nothing completes twice


def test_best_static_is_the_best_of_every_split():
    trace = shifting_trace(30.0, [device_demand(0.3, devices=5), device_demand(0.7, devices=5)], seed=2)
    slo = {"chat": 0.5, "image": 2.0}
    split, goodput = best_static([FAST, SLOW], trace, 5, 30.0, slo, dt=0.02)
    every = {c: simulate([FAST, SLOW], {"chat": c, "image": 5 - c}, trace, 30.0, dt=0.02).goodput(slo)
             for c in range(1, 5)}
    assert goodput == max(every.values()) and every[split["chat"]] == goodput


def test_devices_go_to_the_pool_and_come_back_from_it():
    # chat's traffic stops after 5 s: it gives its extra replicas back; image then needs them
    trace = ([Arrival(t * 0.05, "chat") for t in range(100)]
             + [Arrival(20 + t * 0.2, "image") for t in range(100)])
    policy = ElasticConfig(interval_s=0.5, rate_window_s=4.0, low_delay_s=0.05, high_delay_s=0.5, cooldown_s=1.0,
                           reload_s=0.5, horizon_s=10.0, min_gain=1.0)
    out = simulate([FAST, SLOW], {"chat": 3, "image": 1}, trace, 60.0, policy=policy, dt=0.02, max_replicas=4)
    kinds = [(a.kind, a.stage) for _, a in out.actions]
    assert ("remove", "chat") in kinds and ("add", "image") in kinds
    assert kinds.index(("remove", "chat")) < kinds.index(("add", "image"))
    assert sum(len(v) for v in out.latencies.values()) == len(trace)  # every request done once


def test_a_move_between_groups_of_one_stage_serves_at_once():
    # One LLM stage in two modality groups; the multimodal group's load jumps at 10 s. A regroup
    # reloads nothing, so even with a 30 s reload the moved replicas serve within seconds and the
    # requests they held finish (in their own group).
    text = StageModel("llm/text", base_s=0.01, per_request_s=0.001, steps=10, max_batch=8)
    media = StageModel("llm/multimodal", base_s=0.01, per_request_s=0.002, steps=10, max_batch=8)
    rates = [{"llm/text": 3 * text.capacity, "llm/multimodal": 0.5 * media.capacity},
             {"llm/text": 0.5 * text.capacity, "llm/multimodal": 3 * media.capacity}]
    trace = shifting_trace(20.0, rates, seed=2, burst_factor=1.0)
    slow_reload = ElasticConfig(**{**POLICY.__dict__, "reload_s": 30.0})
    out = simulate([text, media], {"llm/text": 4, "llm/multimodal": 2}, trace, 20.0, policy=slow_reload, dt=0.01)
    moves = [(t, a) for t, a in out.actions if a.kind == "move" and a.stage == "llm/multimodal"]
    assert moves and moves[0][0] < 14 and "no reload" in moves[0][1].reason
    late = out.latencies["llm/multimodal"][-100:]
    assert max(late) < 2.0  # served by the regrouped replicas long before a reload could end
    assert len(out.latencies["llm/text"]) + len(out.latencies["llm/multimodal"]) >= len(trace) - 40


def test_the_controller_keeps_the_dear_type_alive_where_the_best_static_split_gives_it_up():
    """Two types, one 13x dearer per request, the mix shifting 80/20 -> 20/80 -> 50/50: the best
    static split serves the cheap type and lets the dear one's requests miss; the controller keeps
    serving both (most dear requests within their SLO)."""
    trace = shifting_trace(90.0, [device_demand(0.8), device_demand(0.2), device_demand(0.5)], seed=2)
    slo = {"chat": 1.0, "image": 3.0}
    split, _ = best_static([FAST, SLOW], trace, 6, 90.0, slo, dt=0.02)
    static = simulate([FAST, SLOW], split, trace, 90.0, dt=0.02)
    elastic = simulate([FAST, SLOW], {"chat": 3, "image": 3}, trace, 90.0, policy=POLICY, dt=0.02)
    offered = sum(1 for a in trace if a.stage == "image")

    def dear_on_time(run):
        return sum(1 for lat in run.latencies["image"] if lat <= slo["image"]) / offered
    assert dear_on_time(elastic) > 0.6 and dear_on_time(elastic) > dear_on_time(static) + 0.2


def test_knowing_the_slos_the_controller_keeps_more_requests_within_them():
    """The two-type trace again, with the wait budgets given to the policy: it weighs requests
    kept within their SLO instead of queueing, and keeps more of them; the dear type still gets
    served, far more of it than by the best static split."""
    trace = shifting_trace(90.0, [device_demand(0.8), device_demand(0.2), device_demand(0.5)], seed=2)
    slo = {"chat": 1.0, "image": 3.0}
    by_queueing = simulate([FAST, SLOW], {"chat": 3, "image": 3}, trace, 90.0, policy=POLICY, dt=0.02)
    by_goodput = simulate([FAST, SLOW], {"chat": 3, "image": 3}, trace, 90.0, policy=POLICY, dt=0.02, slo=slo)
    assert by_goodput.goodput(slo) > by_queueing.goodput(slo)
    split, _ = best_static([FAST, SLOW], trace, 6, 90.0, slo, dt=0.02)
    static = simulate([FAST, SLOW], split, trace, 90.0, dt=0.02)
    offered = sum(1 for a in trace if a.stage == "image")

    def dear_on_time(run):
        return sum(1 for lat in run.latencies["image"] if lat <= slo["image"]) / offered
    assert dear_on_time(by_goodput) > dear_on_time(static) + 0.2  # (47% against 13% here)


def test_shedding_refuses_what_would_be_late_and_keeps_the_rest_within_the_slo():
    """An overloaded static stage: without shedding its FIFO queue makes nearly every request
    late; refusing those predicted to wait past their budget keeps the admitted ones at most a
    little past it (the prediction is a fluid one: requests that joined together finish
    together). Underloaded, nothing is refused."""
    slo = {"chat": 0.5, "image": 3.0}
    overload = shifting_trace(30.0, [{"chat": 2.0 * FAST.capacity}], seed=3)
    queued = simulate([FAST], {"chat": 1}, overload, 30.0, dt=0.005, slo=slo)
    shed = simulate([FAST], {"chat": 1}, overload, 30.0, dt=0.005, slo=slo, shed=True)
    assert queued.shed == 0 and shed.shed > len(overload) / 3
    assert shed.goodput(slo) > 3 * queued.goodput(slo)
    assert sum(lat <= slo["chat"] for lat in shed.latencies["chat"]) >= 0.6 * len(shed.latencies["chat"])
    assert max(shed.latencies["chat"]) < 1.1 * slo["chat"] < min(sorted(queued.latencies["chat"])[100:])
    calm = shifting_trace(30.0, [{"chat": 0.5 * FAST.capacity}], seed=3, burst_factor=1.0)
    assert simulate([FAST], {"chat": 1}, calm, 30.0, dt=0.005, slo=slo, shed=True).shed == 0
