"""Per-request LoRA: a tiny LoRA file built here changes a request's image exactly as diffusers'
``load_lora_weights`` does, while a request without it in the same step is unchanged; adapters
load lazily into an LRU; bad names and text-encoder LoRAs are refused."""
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from safetensors.torch import load_file, save_file

from omnistage.diffusion.engine import ADAPTER_AGE
from omnistage.diffusion.lora import Adapters
from omnistage.diffusion.params import parse_params
from omnistage.errors import RequestRejected
from omnistage.models.tiny import ensure_tiny
from tests.diffusion.conftest import Harness

TOL = 1e-4
ARGS = dict(height=32, width=32, num_inference_steps=4, guidance_scale=7.5)


def make_lora(directory, seed):
    """A random rank-4 LoRA over the tiny SD UNet's attention, saved as diffusers saves one."""
    pipe = StableDiffusionPipeline.from_pretrained(ensure_tiny("sd"))
    torch.manual_seed(seed)
    config = LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"], init_lora_weights=False)
    pipe.unet.add_adapter(config)
    StableDiffusionPipeline.save_lora_weights(str(directory), unet_lora_layers=get_peft_model_state_dict(pipe.unet))
    return str(directory)


@pytest.fixture(scope="module")
def loras(tmp_path_factory):
    root = tmp_path_factory.mktemp("loras")
    return {name: make_lora(root / name, seed) for name, seed in (("ink", 1), ("neon", 2))}


def reference(prompt, seed, lora=None, path=None, steps=ARGS["num_inference_steps"]):
    pipe = StableDiffusionPipeline.from_pretrained(ensure_tiny("sd"))
    pipe.set_progress_bar_config(disable=True)
    if lora is not None:
        pipe.load_lora_weights(path, adapter_name=lora[0])
        pipe.set_adapters([lora[0]], adapter_weights=[lora[1]])
    args = {**ARGS, "num_inference_steps": steps}
    return pipe(prompt, generator=torch.Generator().manual_seed(seed), output_type="np", **args).images[0]


def engine_with(loras, capacity=4):
    h = Harness("sd")  # (its own pipeline: adapters are loaded into it)
    h.engine.adapters = Adapters(h.family.pipe, loras, capacity)
    h.info = {**h.info, "loras": sorted(loras)}
    return h


def test_a_lora_changes_its_request_as_diffusers_does_and_not_its_neighbour(loras):
    h = engine_with(loras)
    h.add("styled", "a cat on a hill", seed=4, lora={"name": "ink", "scale": 0.7}, **ARGS)
    h.add("plain", "a dog in the rain", seed=5, **ARGS)
    h.add("other", "a bird at night", seed=6, lora={"name": "neon"}, **ARGS)
    got = h.pixels(h.run())
    want = reference("a cat on a hill", 4, ("ink", 0.7), loras["ink"])
    assert np.abs(got["styled"] - want).max() < TOL
    assert np.abs(want - reference("a cat on a hill", 4)).max() > 100 * TOL  # (the LoRA does change it)
    assert np.abs(got["plain"] - reference("a dog in the rain", 5)).max() < TOL
    assert np.abs(got["other"] - reference("a bird at night", 6, ("neon", 1.0), loras["neon"])).max() < TOL


def test_adapters_load_lazily_and_the_least_recently_used_is_unloaded(loras):
    h = engine_with(loras, capacity=1)
    assert h.engine.adapters.loads == 0
    for rid, name in (("a", "ink"), ("b", "neon"), ("c", "ink")):
        h.add(rid, "a cat on a hill", seed=4, lora={"name": name, "scale": 0.7}, **ARGS)
        got = h.pixels(h.run())[rid]
        assert list(h.engine.adapters.loaded) == [name]
    assert h.engine.adapters.loads == 3
    assert np.abs(got - reference("a cat on a hill", 4, ("ink", 0.7), loras["ink"])).max() < TOL


def test_more_adapters_at_once_than_max_loras_take_turns_instead_of_reloading_every_step(loras):
    h = engine_with(loras, capacity=1)
    long = {**ARGS, "num_inference_steps": 12}
    h.add("a", "a cat on a hill", seed=4, lora={"name": "ink", "scale": 0.7}, **long)
    h.add("b", "a bird at night", seed=6, lora={"name": "neon"}, **ARGS)
    h.add("c", "a dog in the rain", seed=5, **ARGS)
    got = h.pixels(h.run())
    # ink runs while neon's request waits; at ADAPTER_AGE (8) steps it takes its turn, 4 steps,
    # then ink is loaded again for the rest: 3 loads. (Both in every step: both loaded every step,
    # 24; no aging: b would wait for all 12 of a's steps, 2.)
    assert ADAPTER_AGE == 8 and h.engine.adapters.loads == 3
    want = reference("a cat on a hill", 4, ("ink", 0.7), loras["ink"], steps=12)
    assert np.abs(got["a"] - want).max() < TOL
    assert np.abs(got["b"] - reference("a bird at night", 6, ("neon", 1.0), loras["neon"])).max() < TOL
    assert np.abs(got["c"] - reference("a dog in the rain", 5)).max() < TOL


def test_unknown_adapters_and_text_encoder_loras_are_refused(loras, tmp_path):
    info = {**Harness("sd").info, "loras": ["ink"]}
    for bad, param in (({"name": "oil"}, "lora.name"), ({"name": "ink", "scale": "x"}, "lora.scale"),
                       ({"scale": 1}, "lora"), ("ink", "lora")):
        with pytest.raises(RequestRejected) as err:
            parse_params(info, {"lora": bad})
        assert err.value.param == param
    weights = load_file(str(next(Path(loras["ink"]).glob("*.safetensors"))))
    weights["text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight"] = torch.zeros(4, 32)
    save_file(weights, str(tmp_path / "te.safetensors"))  # (as a LoRA trained on the text encoder too)
    with pytest.raises(ValueError, match="has text-encoder weights"):
        Adapters(None, {"te": str(tmp_path / "te.safetensors")}, 2)
    with pytest.raises(ValueError, match="does not exist"):
        Adapters(None, {"gone": str(tmp_path / "missing.safetensors")}, 2)
