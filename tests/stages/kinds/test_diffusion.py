"""Diffusion stages in real worker processes, against the diffusers pipeline."""
import io

import av
import numpy as np
import pytest
from PIL import Image

from omnistage.diffusion.output import to_uint8
from omnistage.errors import RequestRejected
from omnistage.pipeline import Pipeline
from omnistage.stages.runtime.handle import ChunkEvent
from tests.conftest import ROOT

TOL = 1e-4


@pytest.fixture(scope="module")
def t2i():
    with Pipeline.from_yaml(ROOT / "examples" / "text_to_image.yaml") as pipe:
        yield pipe


def test_fused_stage_images_equal_diffusers(t2i, diffusers_reference):
    reqs = [dict(prompt=f"a red square {i}", seed=i, num_inference_steps=2 + i, guidance_scale=[1.0, 7.5][i % 2])
            for i in range(4)]
    handles = [t2i.submit(**r, output_format="raw") for r in reqs]
    for r, h in zip(reqs, handles):
        got = h.result(120).outputs["image"]
        assert got["format"] == "raw" and (got["width"], got["height"]) == (32, 32)
        ref = diffusers_reference("sd", r["prompt"], r["seed"], height=32, width=32,
                                  num_inference_steps=r["num_inference_steps"], guidance_scale=r["guidance_scale"])
        assert np.abs(got["data"].numpy() - ref).max() < TOL


def test_png_holds_the_same_image_and_progress_streams_first(t2i):
    events = list(t2i.submit(prompt="a cat", seed=5, num_inference_steps=3).events(120))
    chunks = [e for e in events if isinstance(e, ChunkEvent)]
    assert [c.value[0].step for c in chunks if c.modality == "progress"] == [1, 2, 3]
    assert chunks[-1].modality == "image"  # after every progress chunk
    png = chunks[-1].value
    raw = t2i.generate(prompt="a cat", seed=5, num_inference_steps=3, output_format="raw").outputs["image"]["data"]
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png["data"]))), to_uint8(raw.numpy()))


@pytest.mark.parametrize("params, param", [
    ({"height": 36}, "height"), ({"num_inference_steps": 0}, "num_inference_steps"),
    ({"num_inference_steps": 10000}, "num_inference_steps"), ({"guidance_scale": -2}, "guidance_scale"),
    ({"scheduler": "nope"}, "scheduler"), ({"num_frames": 9}, "num_frames"),
    ({"num_inference_step": 3}, "num_inference_step"), ({"temperature": 0}, "temperature"),
    ({"height": "64"}, "height"), ({"seed": -5}, "seed"),
])
def test_bad_parameters_are_refused_at_submit(t2i, params, param):
    with pytest.raises(RequestRejected) as err:
        t2i.submit(prompt="a cat", **params)
    assert err.value.param == param
    assert not t2i.orchestrator.requests  # nothing was admitted, no stage computed anything


def test_split_text_denoise_decode_equals_diffusers(diffusers_reference):
    with Pipeline.from_yaml(ROOT / "examples" / "text_to_image_split.yaml") as pipe:
        reqs = [dict(prompt=f"a blue circle {i}", seed=10 + i, num_inference_steps=2 + i % 3,
                     guidance_scale=[1.0, 4.0][i % 2]) for i in range(5)]
        handles = [pipe.submit(**r, output_format="raw") for r in reqs]
        for r, h in zip(reqs, handles):
            got = h.result(120).outputs["image"]["data"].numpy()
            ref = diffusers_reference("sd3", r["prompt"], r["seed"], num_inference_steps=r["num_inference_steps"],
                                      guidance_scale=r["guidance_scale"], height=32, width=32)
            assert np.abs(got - ref).max() < TOL
        with pytest.raises(RequestRejected, match="multiple of 4"):
            pipe.submit(prompt="x", width=30)  # refused before the text stage sees it


def test_video_stage_mp4_and_raw_equal_diffusers(diffusers_reference):
    with Pipeline.from_yaml(ROOT / "examples" / "text_to_video.yaml") as pipe:
        mp4 = pipe.submit(prompt="a dog running", seed=4, num_inference_steps=3)
        raw = pipe.submit(prompt="a dog running", seed=4, num_inference_steps=3, output_format="raw")
        video = mp4.result(120).outputs["video"]
        assert (video["format"], video["frames"], video["fps"]) == ("mp4", 9, 8)
        with av.open(io.BytesIO(video["data"])) as container:
            assert len(list(container.decode(video=0))) == 9
        got = raw.result(120).outputs["video"]["data"].numpy()
        ref = diffusers_reference("wan", "a dog running", 4, height=32, width=32, num_frames=9,
                                  num_inference_steps=3, guidance_scale=5.0)
        assert np.abs(got - ref).max() < TOL


def test_a_worker_applies_a_requests_lora_and_caches_steps(tmp_path):
    """A real worker with a registered LoRA: a request naming it gets diffusers' LoRA image, one
    beside it without does not, and a cached request reports its skipped steps."""
    import torch
    from diffusers import StableDiffusionPipeline

    from omnistage.models.tiny import ensure_tiny
    from tests.diffusion.test_lora import make_lora
    lora = make_lora(tmp_path / "ink", 1)
    graph = (ROOT / "examples" / "text_to_image.yaml").read_text().replace(
        "options: {height: 32, width: 32, num_inference_steps: 20}",
        f"options: {{height: 32, width: 32, num_inference_steps: 20, loras: {{ink: '{lora}'}}}}")
    (tmp_path / "g.yaml").write_text(graph)
    args = dict(seed=3, num_inference_steps=4, guidance_scale=7.5, output_format="raw")
    with Pipeline.from_yaml(tmp_path / "g.yaml") as pipe:
        styled = pipe.submit(prompt="a cat", lora={"name": "ink", "scale": 0.5}, **args)
        plain = pipe.submit(prompt="a cat", **args)
        cached = pipe.submit(prompt="a cat", cache={"policy": "reuse", "threshold": 0.5},
                             **{**args, "num_inference_steps": 20})
        got = {k: h.result(120) for k, h in (("styled", styled), ("plain", plain), ("cached", cached))}
        with pytest.raises(RequestRejected, match="unknown LoRA 'oil'"):
            pipe.submit(prompt="a cat", lora={"name": "oil"}).result(60)
    ref = StableDiffusionPipeline.from_pretrained(ensure_tiny("sd"))
    ref.set_progress_bar_config(disable=True)
    call = dict(generator=torch.Generator().manual_seed(3), height=32, width=32, num_inference_steps=4,
                guidance_scale=7.5, output_type="np")
    want_plain = ref("a cat", **call).images[0]
    ref.load_lora_weights(lora, adapter_name="ink")
    ref.set_adapters(["ink"], adapter_weights=[0.5])
    want_styled = ref("a cat", **{**call, "generator": torch.Generator().manual_seed(3)}).images[0]
    assert np.abs(got["styled"].outputs["image"]["data"].numpy() - want_styled).max() < TOL
    assert np.abs(got["plain"].outputs["image"]["data"].numpy() - want_plain).max() < TOL
    assert got["cached"].meta["generate"]["skipped_steps"] > 0 and got["plain"].meta["generate"]["skipped_steps"] == 0


def test_vae_tiling_auto_tiles_on_a_gpu_only():
    from omnistage.graph.options import DiffusionOptions
    from omnistage.stages.kinds.diffusion import tiles
    assert tiles(DiffusionOptions(), "cuda:1") and not tiles(DiffusionOptions(), "cpu")
    assert tiles(DiffusionOptions(vae_tiling=True), "cpu") and not tiles(DiffusionOptions(vae_tiling=False), "cuda")
