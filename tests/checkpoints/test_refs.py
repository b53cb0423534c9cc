"""Model references, read in one place."""
import pytest

from omnistage.checkpoints.refs import TinyRef, parse_tiny, resolve_model


def test_tiny_references_and_their_sub_models():
    assert parse_tiny("tiny:qwen2") == TinyRef("qwen2")
    assert parse_tiny("tiny:qwen2.5-omni/talker") == TinyRef("qwen2.5-omni", "talker")
    assert parse_tiny("./tiny:odd-dir") is None and parse_tiny("Qwen/Qwen2-0.5B") is None
    assert str(TinyRef("qwen2.5-omni", "talker")) == "tiny:qwen2.5-omni/talker"


def test_resolve_keeps_tiny_and_hub_ids_and_makes_local_directories_absolute(tmp_path):
    assert resolve_model("tiny:qwen2.5-omni/token2wav", tmp_path) == "tiny:qwen2.5-omni/token2wav"
    assert resolve_model("Qwen/Qwen2-VL-2B-Instruct", tmp_path) == "Qwen/Qwen2-VL-2B-Instruct"
    (tmp_path / "ckpt").mkdir()
    assert resolve_model("ckpt", tmp_path) == str((tmp_path / "ckpt").resolve())
    assert resolve_model(str(tmp_path / "ckpt"), tmp_path.parent) == str((tmp_path / "ckpt").resolve())


@pytest.mark.parametrize("ref, words", [
    ("tiny:qwen2x", 'unknown tiny model \'qwen2x\' (did you mean "qwen2"?)'),
    ("tiny:nothing-like-it/x", "unknown tiny model 'nothing-like-it'; available: qwen2"),
    ("./no/such/dir", "model directory './no/such/dir' not found"),
])
def test_what_cannot_be_loaded_says_why(tmp_path, ref, words):
    with pytest.raises(ValueError) as info:
        resolve_model(ref, tmp_path)
    assert words in str(info.value)
