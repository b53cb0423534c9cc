"""From a resolved reference to what from_pretrained takes, and the graph's tiny models prepared."""
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
