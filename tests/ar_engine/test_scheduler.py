"""The scheduler as a pure state machine, driven with fake model outputs (no model)."""
import zlib

from omnistage.ar_engine.block_manager import BlockManager
from omnistage.ar_engine.sampling import SamplingParams
from omnistage.ar_engine.config import EngineConfig
from omnistage.ar_engine.scheduler import Scheduler
from omnistage.ar_engine.sequence import Sequence, Status


def fake_token(seq: Sequence) -> int:
    """Deterministic in (request, position): recomputation after preemption yields the same."""
    return (zlib.crc32(seq.rid.encode()) + 7 * len(seq.output)) % 1000


def make(rid, prompt_len, max_tokens=5, prefix=()):
    # A stable per-request start (str hash() changes per process): prompts of different requests
    # must not share a prefix by chance, or the prefix cache would make this test's outcome vary.
    start = zlib.crc32(rid.encode()) % 1000
    prompt = list(prefix) + [(start + i) % 1000 for i in range(prompt_len - len(prefix))]
    return Sequence(rid, prompt, SamplingParams(max_tokens=max_tokens, temperature=0))


def drive(sched, seqs, max_steps=10_000):
    for seq in seqs:
        sched.add(seq)
    plans = []
    for _ in range(max_steps):
        if not sched.has_work():
            break
        plan = sched.schedule()
        assert plan.chunks, "no progress"
        plans.append(plan)
        sampled = {c.seq.rid: fake_token(c.seq) for c in plan.chunks if c.samples}
        for seq in sched.update(plan, sampled):
            if len(seq.output) == seq.sampling.max_tokens:
                sched.finish(seq)
    return plans


def expected(seq):
    probe = Sequence(seq.rid, seq.prompt, seq.sampling)
    for _ in range(seq.sampling.max_tokens):
        probe.output.append(fake_token(probe))
    return probe.output


def test_chunked_prefill_under_a_token_budget_mixed_with_decodes():
    blocks = BlockManager(64, 4)
    sched = Scheduler(EngineConfig(max_tokens_per_step=8), 8, blocks)
    seqs = [make("a", 3, max_tokens=4), make("b", 10), make("c", 6)]
    plans = drive(sched, seqs)
    first, second = plans[0], plans[1]
    assert [(c.seq.rid, c.length) for c in first.chunks] == [("a", 3), ("b", 5)]
    # a decodes; c's short prompt takes the fast lane ahead of b's prefill, which gets the rest
    assert [(c.seq.rid, c.length) for c in second.chunks] == [("a", 1), ("c", 6), ("b", 1)]
    assert all(p.num_tokens <= 8 for p in plans)
    for seq in seqs:
        assert seq.output == expected(seq) and seq.status is Status.FINISHED
    assert blocks.num_free == 64


def test_short_prompts_are_not_stuck_behind_long_prefills():
    sched = Scheduler(EngineConfig(max_tokens_per_step=64, short_prompt_tokens=16), 64, BlockManager(256, 4))
    longs = [make(f"long{i}", 200) for i in range(3)]
    for seq in longs:
        sched.add(seq)
    first = sched.schedule()
    sched.update(first, {})
    chat = make("chat", 10)
    sched.add(chat)
    second = sched.schedule()
    assert second.chunks[0].seq is chat and second.chunks[0].length == 10
    assert sum(c.length for c in second.chunks) == 64  # the long prefill continues with the rest


def test_max_seqs_limits_running_sequences():
    sched = Scheduler(EngineConfig(max_tokens_per_step=100), 2, BlockManager(64, 4))
    plans = drive(sched, [make(f"r{i}", 4) for i in range(5)])
    assert max(len({c.seq.rid for c in p.chunks}) for p in plans) == 2


def test_preemption_by_recompute_loses_and_duplicates_nothing():
    blocks = BlockManager(10, 4)  # 40 slots for 6 requests that need up to 14 tokens each
    sched = Scheduler(EngineConfig(max_tokens_per_step=32), 6, blocks)
    seqs = [make(f"r{i}", 6 + i, max_tokens=8) for i in range(6)]
    plans = drive(sched, seqs)
    assert sum(len(p.preempted) for p in plans) > 0
    assert sum(s.preemptions for s in seqs) > 0
    for seq in seqs:
        assert seq.output == expected(seq), seq.rid
    assert blocks.num_free == 10


def test_prefix_cache_hit_skips_computed_blocks():
    blocks = BlockManager(32, 4)
    sched = Scheduler(EngineConfig(max_tokens_per_step=64), 64, blocks)
    shared = list(range(100, 112))
    first = make("first", 14, prefix=shared)
    drive(sched, [first])
    second = make("second", 13, prefix=shared)
    plans = drive(sched, [second])
    assert second.num_cached == 12  # three full blocks of the shared prefix
    assert plans[0].chunks[0].start == 12 and plans[0].chunks[0].length == 1
    assert second.output == expected(second)


def test_abort_frees_blocks_and_forgets():
    blocks = BlockManager(16, 4)
    sched = Scheduler(EngineConfig(), 64, blocks)
    a, b = make("a", 9), make("b", 5)
    sched.add(a)
    sched.add(b)
    sched.schedule()
    sched.finish(a)
    assert sched.find("a") is None and a.status is Status.FINISHED
    assert blocks.num_free == 16 - len(b.block_table)
