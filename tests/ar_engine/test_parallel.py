"""Tensor parallelism: the engine over a model split across two ranks (gloo, processes) gives
the single-device engine's greedy tokens and logprobs, with chunked prefill and the prefix cache
at work; what crosses between ranks survives its typed round trip."""
import json
import random
import subprocess
import sys

import pytest
import torch

from omnistage.ar_engine.attention import AttentionMetadata, PrefillSpan
from omnistage.ar_engine.config import EngineConfig
from omnistage.ar_engine.engine import EngineRequest, LLMEngine
from omnistage.ar_engine.parallel import _flatten, _unflatten
from omnistage.ar_engine.runner import StepInputs
from omnistage.ar_engine.sampling import SamplingParams
from omnistage.checkpoints import resolve_model
from omnistage.checkpoints.loading import checkpoint_dir
from omnistage.stages.kinds.ar import load_model
from tests.conftest import ROOT

LOGPROB_TOL = 1e-4


def prompts() -> list[list[int]]:
    rng = random.Random(0)
    alone = [[rng.randrange(3, 500) for _ in range(n)] for n in (5, 40, 90, 17, 3, 60)]
    shared = [rng.randrange(3, 500) for _ in range(48)]  # three blocks, cached after the first
    return alone + [shared + p[:4] for p in alone[:3]]


def generate(model, step_tokens: int, tp: int = 1) -> tuple[dict, LLMEngine]:
    """Greedy tokens and logprobs of every prompt: the first two waves run together, the
    shared-prefix ones after them (so their prefix comes from the cache)."""
    config = EngineConfig(num_blocks=96, max_model_len=512, max_tokens_per_step=step_tokens)
    engine = LLMEngine(model, None, config, 8, tp_size=tp)
    out: dict[str, dict] = {}
    waves = [list(enumerate(prompts()))[:6], list(enumerate(prompts()))[6:]]
    for wave in waves:
        for i, prompt in wave:
            engine.add(EngineRequest(f"r{i}", prompt, SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True,
                                                                      logprobs=2)))
        while engine.has_work():
            for o in engine.step():
                rec = out.setdefault(o.rid, {"tokens": [], "logprobs": [], "margins": []})
                rec["tokens"] += o.tokens
                rec["logprobs"] += [s.logprob for s in o.logprobs]
                rec["margins"] += [s.top[0][1] - s.top[1][1] for s in o.logprobs]
    out["cached_blocks"] = engine.blocks.hits
    return out, engine


def assert_same(got: dict, want: dict) -> None:
    """Tokens equal where the reference's top-2 margin is not below the tolerance; logprobs close."""
    for rid, ref in want.items():
        if not rid.startswith("r"):
            continue
        for k, (a, b) in enumerate(zip(got[rid]["tokens"], ref["tokens"])):
            if a != b:
                assert ref["margins"][k] < LOGPROB_TOL, (rid, k)
                break
            assert abs(got[rid]["logprobs"][k] - ref["logprobs"][k]) <= LOGPROB_TOL, (rid, k)


@pytest.mark.parametrize("family", ["qwen2", "llama", "mistral", "qwen3"])
def test_two_ranks_equal_one_device(family):
    """Steps of 32 tokens: the longer prompts prefill in chunks, beside other rows' decodes."""
    step_tokens = 32
    path = checkpoint_dir(resolve_model(f"tiny:{family}", ROOT))
    want, _ = generate(load_model(path, torch.float32, "cpu"), step_tokens)
    run = subprocess.run([sys.executable, "-m", "tests.ar_engine.tp_run", path, "2", str(step_tokens)],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads(run.stdout.split("RESULT ", 1)[1])
    assert_same(got, want)
    assert got["cached_blocks"] == want["cached_blocks"] > 0


def test_step_inputs_cross_ranks_intact():
    meta = AttentionMetadata([], torch.tensor([5, 6, 7, 40]), 16, torch.tensor([[0, 1], [2, 0]], dtype=torch.int32),
                             torch.tensor([0, 0, 0, 1], dtype=torch.int32), torch.tensor([6, 7, 8, 9], dtype=torch.int32),
                             decode_rows=torch.tensor([3]), decode_block_tables=torch.tensor([[2, 0]], dtype=torch.int32),
                             decode_ctx_lens=torch.tensor([9], dtype=torch.int32),
                             prefills=[PrefillSpan(0, 3, 5, torch.arange(8))])
    step = StepInputs(torch.randn(4, 8), torch.arange(4).unsqueeze(0), meta, [2, 3], torch.randn(4, 8))

    class Runner:
        device, kv_caches, backend = torch.device("cpu"), ["cache"], "backend"

    back = _unflatten(_flatten(step), Runner())
    assert torch.equal(back.inputs, step.inputs) and torch.equal(back.positions, step.positions)
    assert back.sample_rows == [2, 3] and back.meta.kv_caches == ["cache"] and back.meta.backend == "backend"
    for name in ("slot_mapping", "tables", "token_rows", "ctx_lens", "decode_rows", "decode_block_tables",
                 "decode_ctx_lens"):
        assert torch.equal(getattr(back.meta, name), getattr(meta, name)), name
    span = back.meta.prefills[0]
    assert (span.q_start, span.q_end, span.first_pos) == (0, 3, 5) and torch.equal(span.ctx_slots, torch.arange(8))
    assert back.meta.kernel_rows is None and back.meta.block_size == 16
