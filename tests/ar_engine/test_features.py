"""unsupported_features on config.json dicts: those transformers writes for each family (what
save_pretrained puts in the file) and the tiny checkpoints'."""
import json
import subprocess
import sys

import pytest
import transformers as tf

from omnistage.ar_engine.features import unsupported_features
from omnistage.models.tiny import ensure_tiny
from tests.conftest import ROOT


def config_json(config) -> dict:
    return json.loads(config.to_json_string(use_diff=True))


SUPPORTED = {
    "llama": lambda: tf.LlamaConfig(),
    "llama3-rope": lambda: tf.LlamaConfig(rope_parameters={"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0,
                                                           "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                                           "original_max_position_embeddings": 8192}),
    "mistral": lambda: tf.MistralConfig(),
    "qwen2": lambda: tf.Qwen2Config(),
    "qwen2-sliding": lambda: tf.Qwen2Config(use_sliding_window=True, max_window_layers=2, num_hidden_layers=4),
    "qwen3": lambda: tf.Qwen3Config(),
    "gemma2": lambda: tf.Gemma2Config(),
    "gemma3-text": lambda: tf.Gemma3TextConfig(),
    "phi3-4k": lambda: tf.Phi3Config(sliding_window=2047),
    "qwen2-vl": lambda: tf.Qwen2VLConfig(),
}


@pytest.mark.parametrize("name", sorted(SUPPORTED))
def test_families_the_engine_implements_have_nothing_unsupported(name):
    assert unsupported_features(config_json(SUPPORTED[name]())) == []


@pytest.mark.parametrize("name", ["qwen2", "llama", "mistral", "gemma2", "llama3"])
def test_tiny_checkpoints_have_nothing_unsupported(name):
    assert unsupported_features(json.loads((ensure_tiny(name) / "config.json").read_text())) == []


def test_each_unsupported_feature_is_named():
    cases = [
        (config_json(tf.Llama4Config()), ["attention_chunk_size (chunked local attention, Llama 4)",
                                          "layer_types chunked_attention (only full and sliding attention layers)"]),
        (config_json(tf.GptOssConfig()), ["attention sinks (gpt-oss s_aux)"]),
        (config_json(tf.Gemma3TextConfig(use_bidirectional_attention=True)),
         ["use_bidirectional_attention (non-causal attention, Gemma 2/3)"]),
        (config_json(tf.Qwen3NextConfig()),
         ["layer_types linear_attention (only full and sliding attention layers)"]),
        (config_json(tf.CohereConfig()), ["logit_scale (final logit scaling, Cohere)"]),
        (config_json(tf.GraniteConfig(logits_scaling=8.0)), ["logits_scaling (final logit scaling, Granite)"]),
        (config_json(tf.Gemma3Config()), ["bidirectional attention within images (Gemma 3 vision)"]),
    ]
    for config, want in cases:
        assert unsupported_features(config) == want, config.get("model_type")


def test_rope_whose_frequencies_depend_on_the_batch():
    dynamic = {"model_type": "llama", "rope_scaling": {"type": "dynamic", "factor": 2.0}}
    assert unsupported_features(dynamic) == ["rope type dynamic (frequencies depend on the longest sequence in a step)"]
    # Phi-3-mini-128k as published: "su" is read as longrope, and positions go past 4096.
    long = {"model_type": "phi3", "max_position_embeddings": 131072, "original_max_position_embeddings": 4096,
            "rope_scaling": {"type": "su", "long_factor": [1.0], "short_factor": [1.0]}}
    assert unsupported_features(long) == ["rope type longrope beyond original_max_position_embeddings "
                                          "(frequencies depend on the longest sequence in a step)"]
    # Never past the original length: only the short factors are used, as for any position.
    assert unsupported_features(dict(long, max_position_embeddings=4096)) == []
    # Gemma 3 keeps one rope set per layer type.
    per_type = {"model_type": "gemma3_text", "rope_parameters": {
        "full_attention": {"rope_type": "dynamic", "factor": 2.0}, "sliding_attention": {"rope_type": "default"}}}
    assert unsupported_features(per_type) == ["rope type dynamic (frequencies depend on the longest sequence in a step)"]


def test_the_text_part_of_multimodal_and_omni_configs_is_checked():
    text = {"model_type": "llama4_text"}  # attention_chunk_size absent: Llama 4's default, 8192
    chunked = ["attention_chunk_size (chunked local attention, Llama 4)"]
    assert unsupported_features({"model_type": "llava", "text_config": text}) == chunked
    assert unsupported_features({"model_type": "qwen2_5_omni", "thinker_config": {"text_config": text}}) == chunked
    assert unsupported_features({"model_type": "llama4_text", "attention_chunk_size": None}) == []


def test_importing_it_loads_neither_torch_nor_transformers():
    """The graph compiler calls it while validating, before anything heavy is imported."""
    code = "import sys, omnistage.ar_engine.features; assert not {'torch', 'transformers'} & set(sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
