"""The runner's per-step choices: how many threads a CPU step runs on."""
import torch

from omnistage.ar_engine.config import EngineConfig
from omnistage.ar_engine.engine import EngineRequest, LLMEngine
from omnistage.ar_engine.runner import SMALL_STEP_MACS, step_macs, threads_at_most
from omnistage.ar_engine.sampling import SamplingParams
from omnistage.ar_engine.sequence import Chunk, StepPlan
from omnistage.models.tiny import ensure_tiny
from omnistage.stages.kinds.ar import load_model


def test_step_macs_count_linears_per_token_and_attention_per_pair():
    plan = StepPlan([Chunk(None, 0, 3), Chunk(None, 10, 1)], [])
    # tokens 3 + 1; pairs (1 + 2 + 3) + 11
    assert step_macs(plan, 100, 7) == 4 * 100 + 17 * 7


def test_threads_at_most_restores_the_count():
    before = torch.get_num_threads()
    with threads_at_most(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with threads_at_most(before + 1):
        assert torch.get_num_threads() == before


def test_small_steps_run_on_one_thread_and_large_ones_on_all():
    torch.set_num_threads(2)
    engine = LLMEngine(load_model(str(ensure_tiny("qwen2")), torch.float32, "cpu"), None,
                       EngineConfig(num_blocks=64, max_model_len=512), eos_ids=frozenset())
    seen = []
    engine.runner.decoder.register_forward_pre_hook(lambda *_: seen.append(torch.get_num_threads()))
    big = SMALL_STEP_MACS // engine.runner.linear_params + 1  # tokens enough to pass the bound
    for rid, n in (("small", 5), ("big", big)):
        engine.add(EngineRequest(rid, list(range(5, 5 + n)), SamplingParams(max_tokens=1, temperature=0)))
        while engine.has_work():
            engine.step()
    assert seen == [1, 2] and torch.get_num_threads() == 2
