"""Decode steps through the static buffers a CUDA graph replays, run eagerly on this CPU: padded
to their bucket, with padding rows on a scratch block, they give the same tokens as the plain
path and HF generate while the batch shrinks across buckets."""
import pytest
import torch
from transformers import AutoModelForCausalLM

from omnistage.ar_engine.config import EngineConfig
from omnistage.ar_engine.engine import EngineRequest, LLMEngine
from omnistage.ar_engine.graphs import DecodeGraphs, GraphSettings
from omnistage.ar_engine.shape import bucket_sizes
from omnistage.ar_engine.sampling import SamplingParams
from omnistage.models.tiny import ensure_tiny
from omnistage.stages.kinds.ar_model import load_model

PROMPTS = [list(range(3, 3 + n)) for n in (5, 19, 2, 33, 11)]
NEW = (9, 4, 12, 6, 2)  # requests finish at different steps: 5 rows, then 4, 3, 2, 1 (buckets 8, 4, 4, 2, 1)


def test_buckets_are_powers_of_two_then_multiples_of_eight_up_to_max_seqs():
    assert bucket_sizes(1) == (1,)
    assert bucket_sizes(5) == (1, 2, 4, 8)
    assert bucket_sizes(20) == (1, 2, 4, 8, 16, 24)


def generate(engine):
    for i, (ids, new) in enumerate(zip(PROMPTS, NEW)):
        engine.add(EngineRequest(f"r{i}", ids, SamplingParams(max_tokens=new, temperature=0, ignore_eos=True)))
    out = {}
    while engine.has_work():
        for step in engine.step():
            out.setdefault(step.rid, []).extend(step.tokens)
    return [out[f"r{i}"] for i in range(len(PROMPTS))]


@pytest.mark.parametrize("family", ["qwen2", "gemma2"])  # (gemma2: softcapped logits, sliding windows)
def test_padded_static_decode_steps_give_the_plain_paths_tokens(family):
    path = str(ensure_tiny(family))
    model = load_model(path, torch.float32, "cpu")
    config = EngineConfig(num_blocks=64, block_size=8, max_model_len=128)
    static = LLMEngine(model, None, config, max_seqs=5, decode_graphs="eager")
    assert static.runner.graphs is not None and static.runner.kv_caches[0].shape[1] == 65 * 8  # + the scratch block
    got = generate(static)
    assert static.runner.graphs.inputs is not None  # (decode steps went through the buffers)
    assert got == generate(LLMEngine(model, None, config, max_seqs=5, decode_graphs="off"))
    ref = AutoModelForCausalLM.from_pretrained(path)
    for ids, new, tokens in zip(PROMPTS, NEW, got):
        want = ref.generate(torch.tensor([ids]), max_new_tokens=new, min_new_tokens=new, do_sample=False)
        assert tokens == want[0, len(ids):].tolist()


def test_every_bucket_runs_at_start_largest_first_over_padding_rows_on_the_scratch_block():
    seen = []

    def forward(inputs, positions, meta):
        seen.append((len(inputs), positions.shape, meta.slot_mapping.tolist(), meta.tables.unique().tolist(),
                     meta.ctx_lens.unique().tolist()))
        return inputs.sum(-1, keepdim=True), inputs

    caches = [torch.zeros(2, 17 * 8, 2, 4)]
    graphs = DecodeGraphs(forward, GraphSettings(False, 20, 8), caches, 8, scratch_block=16, backend=None)
    graphs.prepare(32, torch.float32, (3, 1))
    assert [s[0] for s in seen] == [24, 16, 8, 4, 2, 1] and seen[0][1] == (3, 1, 24)
    assert all(slots == [16 * 8] * b and tables == [16] and ctx == [1] for b, _, slots, tables, ctx in seen)
    assert graphs.inputs.shape == (24, 32) and graphs.positions.shape == (3, 1, 24)


def test_an_engine_prepares_its_buffers_at_the_decoders_width():
    model = load_model(str(ensure_tiny("qwen2")), torch.float32, "cpu")
    engine = LLMEngine(model, None, EngineConfig(num_blocks=16, block_size=8, max_model_len=64), max_seqs=20,
                       decode_graphs="eager")
    assert engine.runner.graphs.inputs.shape == (24, model.config.hidden_size)
    assert engine.runner.graphs.positions.shape == (1, 24)


def test_enforce_eager_and_a_cpu_take_no_graphs():
    model = load_model(str(ensure_tiny("qwen2")), torch.float32, "cpu")
    assert LLMEngine(model, None, EngineConfig(num_blocks=32, max_model_len=128)).runner.graphs is None
    with pytest.raises(ValueError, match="decode_graphs is 'auto', 'off' or 'eager'"):
        LLMEngine(model, None, EngineConfig(num_blocks=32, max_model_len=128), decode_graphs="on")
