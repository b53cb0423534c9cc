from pathlib import Path

import pytest

from omnistage.checkpoints import resolve_model
from omnistage.errors import GraphConfigError, RequestRejected
from omnistage.graph.compile import compile_file, compile_text

HERE = Path(__file__).parent
ROOT = HERE.parent.parent

# file -> (YAML path, words in the message, the line the error points at)
BROKEN = {
    "bad_key.yaml": ("stages.llm.batchng", 'did you mean "batching"', 10),
    "cycle.yaml": ("stages.a.inputs", "cycle: a -> b -> a", 5),
    "unknown_port.yaml": ("stages.post.inputs.text", "no output port 'txt' (did you mean \"text\"?)", 11),
    "unknown_kind.yaml": ("stages.llm.kind", "unknown stage kind 'autoregressive'", 6),
    "missing_model_path.yaml": ("models.lm.path", "model directory './no/such/checkpoint' not found", 3),
    "not_streamed.yaml": ("stages.talker.inputs.states", "takes a stream; fake.states is not streamed", 13),
}


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_each_broken_graph_gives_one_clear_error_at_its_line(name):
    with pytest.raises(GraphConfigError) as info:
        compile_file(HERE / "broken" / name, resolve_model)
    path, words, line = BROKEN[name]
    assert len(info.value.issues) == 1, info.value.issues
    issue = info.value.issues[0]
    assert issue.path == path
    assert issue.message.startswith(f"line {line}: ") and words in issue.message


@pytest.mark.parametrize("path", sorted((ROOT / "examples").glob("*.yaml")), ids=lambda p: p.name)
def test_examples_compile(path):
    plan = compile_file(path, resolve_model)
    assert plan.order and plan.routes


SPEECH = """
name: speech
models:
  lm: {path: "tiny:qwen2"}
stages:
  llm:
    kind: ar
    model: lm
    inputs: {messages: request.messages, prompt: request.prompt}
    outputs: {text: response.text}
  tts:
    kind: python
    inputs: {text: llm.text}
    outputs: {audio: response.audio}
    options: {function: "omnistage.examples_lib:shout", outputs: {audio: audio}}
"""


def test_routes_visit_only_what_the_request_needs():
    plan = compile_text(SPEECH, resolve_model)
    assert plan.route_for({"messages"}).stages == ("llm",)
    assert plan.route_for({"messages"}, {"audio"}).stages == ("llm", "tts")
    both = plan.route_for({"prompt"}, {"text", "audio"})
    assert both.stages == ("llm", "tts")
    assert both.expect == {"llm": ("prompt",), "tts": ("text",)}
    assert dict(both.produces) == {"text": ("llm", "text"), "audio": ("tts", "audio")}


def test_route_errors_say_what_the_graph_offers():
    plan = compile_text(SPEECH, resolve_model)
    with pytest.raises(RequestRejected, match="does not accept images"):
        plan.route_for({"messages", "images"})
    with pytest.raises(RequestRejected, match="offers: audio, text") as info:
        plan.route_for({"messages"}, {"video"})
    assert info.value.status == 400


def test_type_mismatch_and_dangling_stage_are_rejected():
    text = SPEECH.replace("outputs: {audio: response.audio}", "outputs: {audio: response.text}")
    with pytest.raises(GraphConfigError, match="carries audio, response.text needs text"):
        compile_text(text, resolve_model)
    dangling = SPEECH.replace("    outputs: {audio: response.audio}\n", "")
    with pytest.raises(GraphConfigError, match="stages.tts: line 11: its outputs go nowhere"):
        compile_text(dangling, resolve_model)


def test_placement_shares_cores_and_plan_pickles():
    import pickle
    plan = compile_text(SPEECH.replace("kind: ar\n", "kind: ar\n    resources: {replicas: 2, threads: 3}\n"), resolve_model)
    assert [s.threads for s in plan.placement["llm"]] == [3, 3]
    assert len(plan.placement["tts"]) == 1
    again = pickle.loads(pickle.dumps(plan))
    assert again.route_for({"messages"}).stages == ("llm",)


def test_used_outputs_name_what_a_stage_must_produce():
    split = compile_file(ROOT / "examples" / "text_to_image_split.yaml", resolve_model)
    assert split.stages["text"].used_outputs == {"embeds"}
    assert split.stages["denoise"].used_outputs == {"latents", "progress"}
    assert split.stages["decode"].used_outputs == {"image"}
    fused = compile_file(ROOT / "examples" / "text_to_image.yaml", resolve_model)
    assert fused.stages["generate"].used_outputs == {"image", "progress"}
    assert fused.route_for(frozenset({"prompt"}), frozenset({"image"})).stages == ("generate",)


def test_streamed_hand_offs_are_marked_on_their_edges():
    plan = compile_file(ROOT / "examples" / "omni.yaml", resolve_model)
    streamed = {str(e) for e in plan.edges if e.stream}
    assert streamed == {"thinker.states -> talker.states", "talker.codes -> vocoder.codes"}


def test_a_graph_without_stages_is_refused():
    with pytest.raises(GraphConfigError, match="stages: line 2: a graph needs at least one stage"):
        compile_text("name: x\nstages: {}\n", resolve_model)


def test_compiling_a_graph_imports_no_torch():
    import subprocess
    import sys
    code = ("import sys; from omnistage.checkpoints import resolve_model; from omnistage.graph.compile import compile_file; "
            "compile_file('examples/omni.yaml', resolve_model); assert 'torch' not in sys.modules, 'torch imported'")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def diffusion_graph(options: str) -> str:
    """A one-stage diffusion graph with ``options`` (YAML flow mapping), its options on line 6."""
    return f"""
name: g
models: {{sd: {{path: "tiny:sd"}}}}
stages:
  gen: {{kind: diffusion, model: sd, inputs: {{prompt: request.prompt}}, outputs: {{image: response.image}},
        options: {options}}}
"""


def test_a_choice_of_a_flag_or_a_word_names_both_when_neither_is_given():
    text = diffusion_graph("{vae_tiling: maybe}")
    with pytest.raises(GraphConfigError, match=r"options.vae_tiling: line 6: got 'maybe', expected true or false or "
                                               r"'auto'"):
        compile_text(text, resolve_model)
    assert compile_text(text.replace("maybe", "auto"), resolve_model).stages["gen"].options.vae_tiling == "auto"


def test_step_budget_is_auto_by_default_or_a_number():
    text = diffusion_graph("{step_budget: lots}")
    with pytest.raises(GraphConfigError, match=r"options.step_budget: line 6: got 'lots', expected a number or 'auto'"):
        compile_text(text, resolve_model)
    assert compile_text(text.replace("lots", "24"), resolve_model).stages["gen"].options.step_budget == 24
    assert compile_text(text.replace("step_budget: lots", "max_loras: 2"), resolve_model).stages["gen"].options.step_budget == "auto"


def test_lora_files_are_taken_from_the_graph_files_directory_and_checked_at_validate_time(tmp_path):
    import torch
    from safetensors.torch import save_file
    (tmp_path / "loras").mkdir()
    save_file({"unet.down_blocks.0.lora_A.weight": torch.zeros(2, 2)}, str(tmp_path / "loras" / "ink.safetensors"))
    save_file({"text_encoder.layers.0.lora_A.weight": torch.zeros(2, 2)}, str(tmp_path / "loras" / "te.safetensors"))
    graph = tmp_path / "graph.yaml"
    text = diffusion_graph("{loras: {ink: loras/ink.safetensors, LATER}}")
    graph.write_text(text.replace(", LATER", ""))
    loras = compile_file(graph, resolve_model).stages["gen"].options.loras
    assert loras == {"ink": str(tmp_path / "loras" / "ink.safetensors")}  # (not the working directory's)
    (tmp_path / "loras" / "cut.safetensors").write_bytes(b"\x05\x00")  # (not even a header's length)
    graph.write_text(text.replace("LATER", "oil: loras/oil.safetensors, te: loras/te.safetensors, "
                                           "cut: loras/cut.safetensors"))
    with pytest.raises(GraphConfigError) as err:
        compile_file(graph, resolve_model)
    assert "stages.gen.options.loras.oil: line 6: LoRA file" in str(err.value) and "does not exist" in str(err.value)
    assert "stages.gen.options.loras.te: line 6: LoRA 'te'" in str(err.value) and "text-encoder weights" in str(err.value)
    assert "stages.gen.options.loras.cut: line 6:" in str(err.value) and "is not a safetensors file" in str(err.value)
