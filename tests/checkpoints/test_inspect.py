"""How a generating checkpoint is loaded is decided by its config."""
import pytest
from transformers import AutoConfig

from omnistage.checkpoints.inspect import language_model_class, read_config
from omnistage.models.tiny import ensure_tiny


def test_the_config_says_causal_lm_or_image_text_to_text():
    assert language_model_class(read_config(str(ensure_tiny("qwen2")))) == "causal_lm"
    assert language_model_class(read_config(str(ensure_tiny("qwen2-vl")))) == "image_text_to_text"
    assert language_model_class(read_config(str(ensure_tiny("qwen2.5-omni") / "thinker"))) == "image_text_to_text"


def test_a_checkpoint_that_does_not_generate_text_is_refused():
    with pytest.raises(ValueError, match="model_type 'speecht5'.* an ar, prefill or decode stage cannot run it"):
        language_model_class(AutoConfig.for_model("speecht5"), "tiny:speecht5")
