"""What a replica placed on a GPU needs, read from real tiny checkpoints (no GPU needed): the
weights equal the loaded models' parameters, the KV minimum one sequence of max_model_len; a
graph that over-commits a card is refused at start and by ``validate --gpu-memory-gib``."""
import json
import shutil
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL, SD3Transformer2DModel
from transformers import (
    AutoModelForCausalLM,
    CLIPTextModelWithProjection,
    T5EncoderModel,
)

from omnistage import Pipeline
from omnistage.checkpoints import resolve_model
from omnistage.checkpoints.gpu_needs import gpu_budgets, plan_needs
from omnistage.checkpoints.loading import checkpoint_dir, torch_dtype
from omnistage.cli import main
from omnistage.errors import GraphConfigError
from omnistage.graph.compile import compile_text
from omnistage.graph.gpu_budget import CONTEXT_BYTES, GIB, GpuBudgetError

GRAPH = """
name: one-card
models:
  lm: {{path: "tiny:qwen2", dtype: {lm_dtype}}}
  sd3: {{path: "tiny:sd3"}}
stages:
  chat:
    kind: ar
    model: lm
    inputs: {{prompt: request.prompt}}
    outputs: {{text: response.text}}
    resources: {{device: "cuda:0"{chat_share}}}
    batching: {{max_batch: 4}}
    options: {{max_model_len: 256, max_tokens_per_step: 64}}
  text:
    kind: text_encode
    model: sd3
    inputs: {{prompt: request.prompt}}
    resources: {{device: cuda}}
  denoise:
    kind: diffusion
    model: sd3
    inputs: {{embeds: text.embeds}}
    resources: {{device: "cuda:0"}}
  decode:
    kind: vae_decode
    model: sd3
    inputs: {{latents: denoise.latents}}
    outputs: {{image: response.image}}
    resources: {{device: "cuda:0"}}
"""


def graph(lm_dtype="float32", chat_share=""):
    return GRAPH.format(lm_dtype=lm_dtype, chat_share=chat_share)


def plan_of(text):
    return compile_text(text, resolve_model)


def param_bytes(*models):
    """Parameters and saved buffers (SD3's positional embedding), tied weights once."""
    unique = {t.data_ptr(): t for m in models for t in m.state_dict().values()}
    return sum(t.numel() * t.element_size() for t in unique.values())


def test_each_replica_needs_its_own_models_weights_and_one_sequence_of_kv():
    needs = {n.stage: n for n in plan_needs(plan_of(graph()))}
    assert {n.device for n in needs.values()} == {"cuda:0"}  # ("cuda" is the current card)
    lm = AutoModelForCausalLM.from_pretrained(checkpoint_dir("tiny:qwen2"))
    sd3 = checkpoint_dir("tiny:sd3")
    assert needs["chat"].weights == param_bytes(lm)
    cfg = lm.config
    kv_per_token = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * (cfg.hidden_size // cfg.num_attention_heads) * 4
    assert needs["chat"].kv_min == 256 * kv_per_token and needs["chat"].activations > 0
    encoders = [CLIPTextModelWithProjection.from_pretrained(sd3, subfolder=f"text_encoder{s}") for s in ("", "_2")]
    encoders.append(T5EncoderModel.from_pretrained(sd3, subfolder="text_encoder_3"))
    # (the diffusion kinds load an fp32 checkpoint in bfloat16 on a GPU: half its fp32 bytes)
    assert needs["text"].weights * 2 == param_bytes(*encoders)
    assert needs["denoise"].weights * 2 == param_bytes(SD3Transformer2DModel.from_pretrained(sd3, subfolder="transformer"))
    assert needs["decode"].weights * 2 == param_bytes(AutoencoderKL.from_pretrained(sd3, subfolder="vae"))
    assert needs["decode"].kv_min == 0 and needs["decode"].least == needs["decode"].weights


def test_weights_count_at_the_dtype_the_stage_loads():
    f32 = next(n for n in plan_needs(plan_of(graph())) if n.stage == "chat")
    bf16 = next(n for n in plan_needs(plan_of(graph("bfloat16"))) if n.stage == "chat")
    assert bf16.weights * 2 == f32.weights and bf16.kv_min * 2 == f32.kv_min


def test_auto_dtype_is_the_checkpoints_except_half_precision_where_it_computes_fast():
    lm, sd3 = checkpoint_dir("tiny:qwen2"), checkpoint_dir("tiny:sd3")  # (both saved in float32)
    assert torch_dtype("auto", lm, "cuda:0") == torch.float32 and torch_dtype("auto", lm, "cpu") == torch.float32
    assert torch_dtype("auto", sd3, "cuda:0", half_on_gpu=True) == torch.bfloat16
    assert torch_dtype("auto", sd3, "cpu", half_on_gpu=True) == torch.float32  # (equal to the diffusers pipeline)
    assert torch_dtype("float32", sd3, "cuda:0", half_on_gpu=True) == torch.float32  # (named: as named)


def test_the_card_is_divided_and_an_over_committed_one_refused_with_the_numbers():
    plan = plan_of(graph(chat_share=", gpu_memory_utilization: 0.5"))
    budget = gpu_budgets(plan, 80 * GIB)["cuda:0"]
    # (the four processes' CUDA contexts lie outside their shares)
    assert budget.share("chat", 0) == 0.5 and sum(budget.shares) == pytest.approx(0.9 - 4 * CONTEXT_BYTES / (80 * GIB))
    with pytest.raises(GpuBudgetError) as err:
        gpu_budgets(plan, 1 * GIB)  # four CUDA contexts alone are 2 GiB
    assert "cuda:0 is over-committed" in str(err.value) and "chat[0]" in str(err.value)


def test_a_pipeline_on_a_gpu_this_machine_lacks_is_refused_before_anything_starts():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(GpuBudgetError, match="cuda:0 is not a GPU of this machine"):
        Pipeline(plan_of(graph()))


def test_a_share_on_a_cpu_stage_or_given_twice_is_a_config_error():
    cpu = graph(chat_share="").replace('device: "cuda:0"}', 'device: cpu, gpu_memory_utilization: 0.5}', 1)
    with pytest.raises(GraphConfigError, match=r"stages.chat.resources.gpu_memory_utilization: line \d+: is a share of a GPU"):
        plan_of(cpu)
    twice = graph(chat_share=", gpu_memory_utilization: 0.5").replace("max_tokens_per_step: 64", "max_tokens_per_step: 64, "
                                                                     "memory_utilization: 0.4")
    with pytest.raises(GraphConfigError, match="both give the stage's share"):
        plan_of(twice)


def test_validate_prints_the_division_or_refuses_an_over_committed_card(tmp_path, capsys):
    path = tmp_path / "g.yaml"
    path.write_text(graph())
    assert main(["validate", str(path), "--gpu-memory-gib", "80"]) == 0
    out = capsys.readouterr().out
    assert "cuda:0: 80.0 GiB" in out and "chat[0]" in out and "decode[0]" in out
    assert main(["validate", str(path), "--gpu-memory-gib", "1"]) == 1
    assert "cuda:0 is over-committed" in capsys.readouterr().err


def test_a_tensor_parallel_rank_holds_a_shard_of_the_projections_and_all_of_the_rest():
    plan = plan_of(graph().replace('device: "cuda:0"}', 'device: "cuda:0", tensor_parallel: 2}', 1))
    ranks = [n for n in plan_needs(plan) if n.stage == "chat"]
    assert [(n.device, n.tp) for n in ranks] == [("cuda:0", 2), ("cuda:1", 2)]
    state = AutoModelForCausalLM.from_pretrained(checkpoint_dir("tiny:qwen2")).state_dict()
    split = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head")
    halves = sum(t.numel() * 4 // (2 if any(p in k for p in split) else 1) for k, t in state.items())
    assert ranks[0].weights == ranks[1].weights == halves
    assert "model.embed_tokens.weight" in state and halves > sum(t.numel() * 4 for t in state.values()) // 2
    assert ranks[0].kv_min * 2 == next(n for n in plan_needs(plan_of(graph())) if n.stage == "chat").kv_min


def test_a_vocoder_counts_its_weights_in_float32_as_it_loads_them():
    omni = (Path(__file__).parents[2] / "examples" / "omni.yaml").read_text()
    omni = omni.replace("resources: {replicas: 2, threads: 1}", "resources: {device: cuda}")
    omni = omni.replace("options: {max_tokens: 512}", "options: {max_tokens: 512}\n    resources: {device: cuda}")
    bf16 = omni.replace('"tiny:qwen2.5-omni/token2wav"}', '"tiny:qwen2.5-omni/token2wav", dtype: bfloat16}')
    bf16 = bf16.replace('"tiny:qwen2.5-omni/talker"}', '"tiny:qwen2.5-omni/talker", dtype: bfloat16}')
    f32, half = ({n.stage: n.weights for n in plan_needs(plan_of(text))} for text in (omni, bf16))
    assert half["vocoder"] == f32["vocoder"] > 0 and half["talker"] * 2 == f32["talker"]


def test_a_diffusion_stage_counts_only_the_components_its_family_loads(tmp_path):
    wan = tmp_path / "wan"
    shutil.copytree(checkpoint_dir("tiny:wan"), wan)
    text = graph().replace('"tiny:sd3"', f'"{wan}"')
    before = {n.stage: n.weights for n in plan_needs(plan_of(text))}
    shutil.copytree(wan / "transformer", wan / "transformer_2")  # (Wan 2.2's second expert, unused)
    index = json.loads((wan / "model_index.json").read_text())
    index["transformer_2"] = index["transformer"]
    (wan / "model_index.json").write_text(json.dumps(index))
    assert {n.stage: n.weights for n in plan_needs(plan_of(text))} == before
    assert before["denoise"] > 0 and before["text"] > 0


def test_an_ar_stage_keeps_room_for_its_decode_graphs_unless_eager():
    graphs, eager = ({n.stage: n for n in plan_needs(plan_of(text))}["chat"]
                     for text in (graph(), graph().replace("max_tokens_per_step: 64", "max_tokens_per_step: 64, "
                                                                                     "enforce_eager: true")))
    cfg = AutoModelForCausalLM.from_pretrained(checkpoint_dir("tiny:qwen2")).config
    # max_batch 4: buckets 1, 2, 4 keep their outputs (7 rows of logits and hidden states), plus
    # the 4-row step's intermediates
    outputs = 7 * (cfg.vocab_size + cfg.hidden_size) * 4
    step = 4 * (2 * cfg.intermediate_size + 6 * cfg.hidden_size + cfg.vocab_size) * 4
    assert graphs.activations - eager.activations == outputs + step
