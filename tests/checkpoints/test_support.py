"""A model a stage kind cannot run is refused at validate time, naming its architecture."""
import subprocess
import sys

import pytest
import torch

from omnistage.checkpoints import resolve_model
from omnistage.checkpoints.support import DIFFUSION_PIPELINES, check_model
from omnistage.errors import GraphConfigError
from omnistage.graph.compile import compile_text
from omnistage.models.tiny import ensure_tiny


@pytest.fixture(scope="module")
def foreign(tmp_path_factory):
    """Tiny real checkpoints of architectures no kind runs: a BERT and a T5."""
    from transformers import BertConfig, BertForMaskedLM, T5Config, T5ForConditionalGeneration
    root = tmp_path_factory.mktemp("foreign")
    torch.manual_seed(0)
    BertForMaskedLM(BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=37)).save_pretrained(root / "bert")
    T5ForConditionalGeneration(T5Config(vocab_size=99, d_model=32, d_ff=37, num_layers=1, num_heads=2,
                                        d_kv=16)).save_pretrained(root / "t5")
    return root


def graph(path, kind="ar"):
    port = {"ar": "messages: request.messages", "tts": "text: request.prompt",
            "diffusion": "prompt: request.prompt"}[kind]
    out = {"ar": "text: response.text", "tts": "audio: response.audio", "diffusion": "image: response.image"}[kind]
    return (f"name: g\nmodels:\n  m: {{path: {path!r}}}\nstages:\n  s:\n    kind: {kind}\n    model: m\n"
            f"    inputs: {{{port}}}\n    outputs: {{{out}}}\n")


@pytest.mark.parametrize("name,arch", [("bert", "BertForMaskedLM"), ("t5", "T5ForConditionalGeneration")])
def test_an_ar_stage_over_an_unsupported_architecture_is_refused_naming_it(foreign, name, arch):
    with pytest.raises(GraphConfigError) as err:
        compile_text(graph(str(foreign / name)), resolve_model, check=check_model)
    text = str(err.value)
    assert "stages.s.model" in text and arch in text and "Qwen2ForCausalLM" in text, text


def test_omnistage_validate_fails_on_it_with_the_architecture_in_the_message(foreign, tmp_path):
    (tmp_path / "g.yaml").write_text(graph(str(foreign / "t5")))
    done = subprocess.run([sys.executable, "-m", "omnistage.cli", "validate", str(tmp_path / "g.yaml")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "T5ForConditionalGeneration" in done.stderr, done.stderr
    done = subprocess.run([sys.executable, "-m", "omnistage.cli", "validate", str(foreign / "bert")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "no default graph for architecture BertForMaskedLM" in done.stderr, done.stderr


def test_a_model_of_another_kind_is_refused_too():
    lm = str(ensure_tiny("qwen2"))
    for kind in ("tts", "diffusion"):
        with pytest.raises(GraphConfigError, match="architecture Qwen2ForCausalLM is not supported by a"):
            compile_text(graph(lm, kind), resolve_model, check=check_model)
    compile_text(graph(lm), resolve_model, check=check_model)  # and the right kind passes


def test_a_config_feature_the_engine_lacks_is_refused(tmp_path):
    import json
    import shutil
    lm = tmp_path / "lm"
    shutil.copytree(ensure_tiny("llama"), lm)
    config = json.loads((lm / "config.json").read_text())
    (lm / "config.json").write_text(json.dumps({**config, "attention_chunk_size": 8}))
    with pytest.raises(GraphConfigError, match="attention_chunk_size"):
        compile_text(graph(str(lm)), resolve_model, check=check_model)


def test_the_diffusion_table_names_exactly_the_families_the_engine_has():
    from omnistage.diffusion.registry import FAMILIES
    assert DIFFUSION_PIPELINES == set(FAMILIES)
