"""What a replica placed on a GPU needs, read from real tiny checkpoints (no GPU needed): the
weights equal the loaded models' parameters, the KV minimum one sequence of max_model_len; a
graph that over-commits a card is refused at start and by ``validate --gpu-memory-gib``."""
import pytest
import torch
from diffusers import AutoencoderKL, SD3Transformer2DModel
from transformers import AutoModelForCausalLM, CLIPTextModelWithProjection, T5EncoderModel

from omnistage import Pipeline
from omnistage.checkpoints import resolve_model
from omnistage.checkpoints.gpu_needs import gpu_budgets, plan_needs
from omnistage.checkpoints.loading import checkpoint_dir
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
    assert needs["text"].weights == param_bytes(*encoders)
    assert needs["denoise"].weights == param_bytes(SD3Transformer2DModel.from_pretrained(sd3, subfolder="transformer"))
    assert needs["decode"].weights == param_bytes(AutoencoderKL.from_pretrained(sd3, subfolder="vae"))
    assert needs["decode"].kv_min == 0 and needs["decode"].least == needs["decode"].weights + CONTEXT_BYTES


def test_weights_count_at_the_dtype_the_stage_loads():
    f32 = next(n for n in plan_needs(plan_of(graph())) if n.stage == "chat")
    bf16 = next(n for n in plan_needs(plan_of(graph("bfloat16"))) if n.stage == "chat")
    assert bf16.weights * 2 == f32.weights and bf16.kv_min * 2 == f32.kv_min


def test_the_card_is_divided_and_an_over_committed_one_refused_with_the_numbers():
    plan = plan_of(graph(chat_share=", gpu_memory_utilization: 0.5"))
    budget = gpu_budgets(plan, 80 * GIB)["cuda:0"]
    assert budget.share("chat", 0) == 0.5 and sum(budget.shares) == pytest.approx(0.9)
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
