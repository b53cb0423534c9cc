"""``omnistage serve MODEL``: the graph built for each supported architecture validates, and the
YAML ``--print-graph`` shows compiles to the same plan."""
import os
import subprocess
import sys

import pytest
import yaml

from omnistage.checkpoints import resolve_model
from omnistage.checkpoints.recipes import ServeSettings
from omnistage.checkpoints.support import check_model
from omnistage.checkpoints.target import graph_text, load_plan
from omnistage.errors import GraphConfigError
from omnistage.graph.compile import compile_text
from omnistage.models.tiny import ensure_tiny

KINDS = {
    "qwen2": {"chat": "ar"},
    "llama": {"chat": "ar"},
    "llama3": {"chat": "ar"},
    "mistral": {"chat": "ar"},
    "gemma2": {"chat": "ar"},
    "qwen3": {"chat": "ar"},
    "qwen3-moe": {"chat": "ar"},
    "gemma3": {"chat": "ar"},
    "qwen2-vl": {"vision": "encode", "chat": "ar"},
    "qwen2.5-vl": {"vision": "encode", "chat": "ar"},
    "sd": {"text": "text_encode", "denoise": "diffusion", "decode": "vae_decode"},
    "sdxl": {"text": "text_encode", "denoise": "diffusion", "decode": "vae_decode"},
    "sd3": {"text": "text_encode", "denoise": "diffusion", "decode": "vae_decode"},
    "flux": {"text": "text_encode", "denoise": "diffusion", "decode": "vae_decode"},
    "qwen-image": {"text": "text_encode", "denoise": "diffusion", "decode": "vae_decode"},
    "wan": {"text": "text_encode", "denoise": "diffusion", "decode": "vae_decode"},
    "whisper": {"listen": "transcribe"},
    "speecht5": {"speak": "tts"},
    "qwen2.5-omni": {"thinker": "ar", "talker": "talker", "vocoder": "vocoder"},
    "bert": {"embed": "embed"},
}


@pytest.mark.parametrize("name", sorted(KINDS))
def test_each_architecture_gets_its_graph_and_the_printed_yaml_is_the_same_plan(name):
    path = str(ensure_tiny(name))
    plan = load_plan(path)
    assert {s: st.kind.name for s, st in plan.stages.items()} == KINDS[name]
    assert plan.name == path
    again = compile_text(graph_text(path, ServeSettings()), resolve_model, check=check_model)
    assert again.stages.keys() == plan.stages.keys() and again.routes.keys() == plan.routes.keys()
    assert {s: st.model_path for s, st in again.stages.items()} == {s: st.model_path for s, st in plan.stages.items()}


def test_a_sentence_transformers_checkpoint_is_served_as_embeddings(tmp_path):
    """A decoder with a sentence-transformers config (as Qwen3-Embedding ships) gets the embed
    graph, not chat; the packaged all-MiniLM-L6-v2 too."""
    import shutil
    target = tmp_path / "qwen2-embedder"
    shutil.copytree(ensure_tiny("qwen2"), target)
    (target / "modules.json").write_text('[{"idx": 0, "name": "0", "path": "", '
                                         '"type": "sentence_transformers.models.Transformer"}]')
    assert {s: st.kind.name for s, st in load_plan(str(target)).stages.items()} == {"embed": "embed"}
    plan = load_plan("packaged:all-minilm-l6-v2")
    assert {s: st.kind.name for s, st in plan.stages.items()} == {"embed": "embed"}
    assert plan.stages["embed"].model_path == "packaged:all-minilm-l6-v2"


def test_flags_land_in_the_graph():
    settings = ServeSettings(served_model_name="lm", dtype="bfloat16", device="cpu", max_model_len=512,
                             kv_cache_mb=8, max_num_seqs=4, chat_template="{{ messages }}", prefix_caching=False,
                             max_tokens_per_step=256)
    plan = load_plan("tiny:qwen2", settings)
    chat = plan.stages["chat"]
    assert plan.name == "lm" and chat.model_dtype == "bfloat16" and chat.config.batching.max_batch == 4
    assert (chat.options.max_model_len, chat.options.kv_cache_mb, chat.options.chat_template) == (512, 8, "{{ messages }}")
    assert (chat.options.prefix_caching, chat.options.max_tokens_per_step) == (False, 256)
    assert load_plan("tiny:qwen2", ServeSettings()).stages["chat"].options.prefix_caching is True


def test_vllm_spelled_engine_flags_parse():
    import argparse

    from omnistage.cli import _settings, add_model_flags
    parser = argparse.ArgumentParser()
    add_model_flags(parser)
    settings = _settings(parser.parse_args(["--no-enable-prefix-caching", "--max-num-batched-tokens", "512"]))
    assert (settings.prefix_caching, settings.max_tokens_per_step) == (False, 512)
    assert _settings(parser.parse_args(["--enable-prefix-caching"])).prefix_caching is True
    assert _settings(parser.parse_args([])).prefix_caching is None
    with pytest.raises(GraphConfigError, match="--max-num-batched-tokens shapes the graph"):
        from tests.conftest import ROOT
        load_plan(ROOT / "examples" / "text_chat.yaml", ServeSettings(max_tokens_per_step=64))


def test_model_flags_with_a_graph_file_say_where_the_setting_goes(tmp_path):
    from tests.conftest import ROOT
    with pytest.raises(GraphConfigError, match="stages.<name>.options.max_model_len"):
        load_plan(ROOT / "examples" / "text_chat.yaml", ServeSettings(max_model_len=128))
    assert load_plan(ROOT / "examples" / "text_chat.yaml", ServeSettings(served_model_name="x")).name == "x"


def test_print_graph_prints_yaml_that_validates(tmp_path):
    done = subprocess.run([sys.executable, "-m", "omnistage.cli", "serve", "tiny:qwen2-vl", "--print-graph",
                           "--max-model-len", "1024"], capture_output=True, text=True, timeout=120, check=True)
    (tmp_path / "g.yaml").write_text(done.stdout)
    assert "max_model_len: 1024" in done.stdout
    check = subprocess.run([sys.executable, "-m", "omnistage.cli", "validate", str(tmp_path / "g.yaml")],
                           capture_output=True, text=True, timeout=120)
    assert check.returncode == 0 and "OK" in check.stdout, check.stderr


def test_a_hub_id_resolves_offline_from_a_prefilled_hub_cache(tmp_path, monkeypatch):
    """HF_HOME holding a tiny model in the hub's cache layout: the id is served with no network."""
    snapshot = prefill_hub_cache(tmp_path / "hf", "tinyorg/tiny-qwen2", ensure_tiny("qwen2"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = subprocess.run([sys.executable, "-m", "omnistage.cli", "validate", "tinyorg/tiny-qwen2"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "Qwen2ForCausalLM" in result.stdout, result.stderr
    assert snapshot.is_dir()
    missing = subprocess.run([sys.executable, "-m", "omnistage.cli", "serve", "tinyorg/not-there"],
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == 1 and "cannot download 'tinyorg/not-there'" in missing.stderr, missing.stderr
    assert "HF_HUB_OFFLINE=1" in missing.stderr


def prefill_hub_cache(hf_home, repo, source):
    """Copy a checkpoint directory into the hub cache layout (refs/main -> snapshots/<commit>)."""
    import shutil
    commit = "0" * 40
    root = hf_home / "hub" / f"models--{repo.replace('/', '--')}"
    snapshot = root / "snapshots" / commit
    shutil.copytree(source, snapshot, ignore=shutil.ignore_patterns(".complete"))
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)
    return snapshot


def test_a_tiny_model_is_built_first_on_a_fresh_cache_and_the_yaml_stays_clean(tmp_path):
    env = dict(os.environ, OMNISTAGE_CACHE=str(tmp_path / "cache"))
    done = subprocess.run([sys.executable, "-m", "omnistage.cli", "serve", "tiny:whisper", "--print-graph"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    assert "building 1 tiny model" in done.stderr and done.stdout.startswith("# The default graph for tiny:whisper")
    assert yaml.safe_load(done.stdout)["stages"]["listen"]["kind"] == "transcribe"


def test_engine_flags_for_a_graph_without_an_ar_stage_are_refused():
    with pytest.raises(GraphConfigError, match="--max-model-len, --max-num-seqs shape an AR engine stage"):
        load_plan("tiny:sd", ServeSettings(max_model_len=64, max_num_seqs=2))
    plan = load_plan("tiny:qwen2-vl", ServeSettings(max_num_seqs=3))  # only the AR stage takes it
    assert plan.stages["chat"].config.batching.max_batch == 3 and plan.stages["vision"].config.batching.max_batch == 16


def test_a_mistyped_graph_file_is_not_taken_for_a_model():
    done = subprocess.run([sys.executable, "-m", "omnistage.cli", "validate", "examples/text_chatt.yaml"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "graph file examples/text_chatt.yaml not found" in done.stderr, done.stderr


@pytest.mark.parametrize("size", ["512K", "0", "-5", "lots"])
def test_kv_cache_memory_below_a_mebibyte_or_not_a_size_is_refused(size):
    done = subprocess.run([sys.executable, "-m", "omnistage.cli", "serve", "tiny:qwen2", "--kv-cache-memory", size],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "--kv-cache-memory" in done.stderr, done.stderr
