"""From a resolved reference to what from_pretrained takes, and the graph's tiny models prepared."""
import pytest
import torch

from omnistage.checkpoints import resolve_model
from omnistage.checkpoints.loading import checkpoint_dir
from omnistage.checkpoints.prepare import prepare_models, tiny_models
from omnistage.graph.compile import compile_file
from omnistage.models.tiny import ensure_tiny
from tests.conftest import ROOT


def test_a_tiny_sub_model_is_a_directory_inside_its_checkpoint():
    root = ensure_tiny("qwen2.5-omni")
    assert checkpoint_dir("tiny:qwen2.5-omni/talker") == str(root / "talker")
    assert checkpoint_dir("tiny:qwen2.5-omni") == str(root)
    assert checkpoint_dir("Qwen/Qwen2-0.5B") == "Qwen/Qwen2-0.5B"


def test_serving_prepares_a_graph_of_sub_models(capsys):
    """`omnistage serve examples/omni.yaml` once failed here: "qwen2.5-omni/talker" is not a tiny model."""
    plan = compile_file(ROOT / "examples" / "omni.yaml", resolve_model)
    assert tiny_models(plan) == ["qwen2.5-omni"]
    ensure_tiny("qwen2.5-omni")
    prepare_models(plan)  # already built: nothing to do, nothing printed
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("component", ["thinker", "talker", "token2wav"])
def test_each_omni_component_loads_from_the_whole_checkpoint_with_no_key_missing(component):
    """The directory Qwen2_5OmniForConditionalGeneration.save_pretrained writes (as released):
    each sub-model takes exactly its own weights, equal to the ones saved on their own."""
    import transformers

    from omnistage.checkpoints.loading import component_kwargs
    from omnistage.models.tiny import ensure_tiny
    root = ensure_tiny("qwen2.5-omni")
    cls = {"thinker": transformers.Qwen2_5OmniThinkerForConditionalGeneration,
           "talker": transformers.Qwen2_5OmniTalkerForConditionalGeneration,
           "token2wav": transformers.Qwen2_5OmniToken2WavModel}[component]
    whole, info = cls.from_pretrained(str(root), output_loading_info=True, **component_kwargs(str(root), component))
    alone = cls.from_pretrained(str(root / component)).state_dict()
    assert not info["missing_keys"] and not info["mismatched_keys"]
    assert not [k for k in info["unexpected_keys"] if k.startswith(f"{component}.")]
    got = whole.state_dict()
    assert got.keys() == alone.keys() and all(torch.equal(got[k], alone[k]) for k in alone)
