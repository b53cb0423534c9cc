"""Step-batched denoising equals the diffusers pipeline, request by request."""
import numpy as np
import pytest
from diffusers import (DDIMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler, EulerDiscreteScheduler,
                       UniPCMultistepScheduler)

from omnistage.errors import RequestRejected

TOL = 1e-4


class FlowUniPC:
    """UniPC set up for flow matching, as the stage's "unipc" is for a flow model."""

    @staticmethod
    def from_config(config):
        return UniPCMultistepScheduler.from_config(config, use_flow_sigmas=True, prediction_type="flow_prediction",
                                                   flow_shift=config["shift"])


def reference(h, cls):
    """Pipeline ``cls`` (img2img, inpaint) over the components of the harness's family."""
    expected, optional = cls._get_signature_keys(cls)
    pipe = cls(**{k: v for k, v in h.family.pipe.components.items() if k in {*expected, *optional}})
    pipe.set_progress_bar_config(disable=True)
    return pipe


SCHEDULERS_FLOW = {"unipc": FlowUniPC}
SCHEDULERS = {"default": None, "euler": EulerDiscreteScheduler, "euler_a": EulerAncestralDiscreteScheduler,
              "dpm++": DPMSolverMultistepScheduler, "ddim": DDIMScheduler}


def test_one_sd_image_alone_equals_diffusers(harness, diffusers_reference):
    h = harness("sd")
    h.add("a", "a red square on a blue field", height=32, width=32, num_inference_steps=4, guidance_scale=7.5, seed=3)
    got = h.pixels(h.run())["a"]
    ref = diffusers_reference("sd", "a red square on a blue field", 3, height=32, width=32, num_inference_steps=4,
                              guidance_scale=7.5)
    assert got.shape == ref.shape == (32, 32, 3)
    assert np.abs(got - ref).max() < TOL
    assert ref.std() > 0.05  # a real image, not a constant


def test_sixteen_mixed_sd_requests_each_equal_diffusers(harness, diffusers_reference):
    """Different step counts, guidance (with and without CFG), seeds and schedulers in one batch."""
    h = harness("sd")
    names = list(SCHEDULERS)
    reqs = {f"r{i}": dict(prompt=f"picture {i % 5} of a cat", seed=100 + i, num_inference_steps=2 + i % 5,
                          guidance_scale=[1.0, 3.0, 7.5, 0.0][i % 4], scheduler=names[i % len(names)])
            for i in range(16)}
    for rid, r in reqs.items():
        h.add(rid, r["prompt"], height=32, width=32, seed=r["seed"], num_inference_steps=r["num_inference_steps"],
              guidance_scale=r["guidance_scale"], scheduler=r["scheduler"])
    got = h.pixels(h.run())
    assert h.engine.last_batch >= 1
    for rid, r in reqs.items():
        ref = diffusers_reference("sd", r["prompt"], r["seed"], scheduler=SCHEDULERS[r["scheduler"]], height=32,
                                  width=32, num_inference_steps=r["num_inference_steps"],
                                  guidance_scale=r["guidance_scale"])
        assert np.abs(got[rid] - ref).max() < TOL, (rid, r)


def test_sd3_batch_equals_diffusers(harness, diffusers_reference):
    h = harness("sd3")
    reqs = {f"r{i}": dict(seed=i, num_inference_steps=2 + i, guidance_scale=[1.0, 5.0][i % 2]) for i in range(4)}
    for rid, r in reqs.items():
        h.add(rid, f"a blue circle {rid}", height=32, width=32, **r)
    got = h.pixels(h.run())
    for rid, r in reqs.items():
        ref = diffusers_reference("sd3", f"a blue circle {rid}", r["seed"], height=32, width=32,
                                  num_inference_steps=r["num_inference_steps"], guidance_scale=r["guidance_scale"])
        assert np.abs(got[rid] - ref).max() < TOL, rid


def test_sdxl_batch_of_two_sizes_equals_diffusers(harness, diffusers_reference):
    """Each size's micro-conditioning (its size ids) and the zeroed empty negative prompt, with and
    without CFG, batched."""
    h = harness("sdxl")
    reqs = {f"r{i}": dict(seed=i, num_inference_steps=2 + i % 3, guidance_scale=[1.0, 5.0][i % 2],
                          width=[32, 48][i // 3]) for i in range(6)}
    for rid, r in reqs.items():
        h.add(rid, f"a green tree {rid}", height=32, **r)
    got = h.pixels(h.run())
    for rid, r in reqs.items():
        ref = diffusers_reference("sdxl", f"a green tree {rid}", r["seed"], height=32, width=r["width"],
                                  num_inference_steps=r["num_inference_steps"], guidance_scale=r["guidance_scale"])
        assert got[rid].shape == (32, r["width"], 3)
        assert np.abs(got[rid] - ref).max() < TOL, rid


def test_flux_batch_of_two_sizes_and_guidances_equals_diffusers(harness, diffusers_reference):
    """Embedded guidance per row (no CFG rows), the shift that follows each size's sequence
    length, and packed latents, batched; another scheduler too."""
    h = harness("flux")
    assert not h.info["classifier_free"]
    reqs = {f"r{i}": dict(seed=i, num_inference_steps=2 + i % 3, guidance_scale=[3.5, 1.0, 7.0][i % 3],
                          width=[32, 48][i // 3]) for i in range(6)}
    reqs["u"] = dict(seed=9, num_inference_steps=3, guidance_scale=3.5, width=32, scheduler="unipc")
    for rid, r in reqs.items():
        h.add(rid, f"a yellow boat {rid}", height=32, **r)
    got = h.pixels(h.run())
    assert h.engine.last_batch >= 1
    for rid, r in reqs.items():
        params = {k: v for k, v in r.items() if k not in ("seed", "scheduler")}
        ref = diffusers_reference("flux", f"a yellow boat {rid}", r["seed"], height=32,
                                  scheduler=SCHEDULERS_FLOW.get(r.get("scheduler")), **params)
        assert got[rid].shape == (32, r["width"], 3)
        assert np.abs(got[rid] - ref).max() < TOL, rid


def test_qwen_image_batch_of_prompt_lengths_sizes_and_true_cfg_equals_diffusers(harness):
    """Qwen-Image requests with prompts of different lengths (padded and masked in one forward),
    two sizes, with and without true CFG (a negative prompt, the norm-rescaled combination), each
    equal to QwenImagePipeline for the same seed."""
    import torch
    from diffusers import QwenImagePipeline

    h = harness("qwen-image")
    reqs = {"a": dict(prompt="a cat", seed=1, num_inference_steps=3, height=32, width=32),
            "b": dict(prompt="a long prompt about a red house beside a lake at dawn", negative_prompt="blurry",
                      seed=2, num_inference_steps=4, height=32, width=32),
            "c": dict(prompt="a tree in a field", negative_prompt="dark, low quality", guidance_scale=2.5, seed=3,
                      num_inference_steps=3, height=32, width=48),
            "d": dict(prompt="two birds on a wire", seed=4, num_inference_steps=2, height=32, width=32)}
    for rid, r in reqs.items():
        h.add(rid, **r)
    got = h.pixels(h.run())
    ref_pipe = reference(h, QwenImagePipeline)
    for rid, r in reqs.items():
        ref = ref_pipe(r["prompt"], negative_prompt=r.get("negative_prompt"), true_cfg_scale=r.get("guidance_scale", 4.0),
                       height=r["height"], width=r["width"], num_inference_steps=r["num_inference_steps"],
                       generator=torch.Generator().manual_seed(r["seed"]), output_type="np").images[0]
        assert np.abs(got[rid] - ref).max() < TOL, rid


def test_flux_refuses_a_negative_prompt(harness):
    with pytest.raises(RequestRejected, match="negative_prompt") as info:
        harness("flux").add("n", "a cat", height=32, width=32, negative_prompt="blurry")
    assert info.value.param == "negative_prompt"


@pytest.mark.parametrize("name", ["sd", "sdxl"])
def test_sd_image_to_image_beside_text_to_image_equals_diffusers(harness, name):
    """img2img requests (different strengths, guidance, schedulers) in one batch with a
    text-to-image one, each equal to the img2img pipeline of the family."""
    import torch
    from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionXLImg2ImgPipeline
    from PIL import Image

    from omnistage.diffusion.params import parse_params
    h = harness(name)
    g = torch.Generator().manual_seed(0)
    image = Image.fromarray((torch.rand(32, 32, 3, generator=g) * 255).byte().numpy())
    reqs = {"a": dict(seed=1, num_inference_steps=5, guidance_scale=7.5, strength=0.6),
            "b": dict(seed=2, num_inference_steps=4, guidance_scale=1.0, strength=1.0),
            "c": dict(seed=3, num_inference_steps=6, guidance_scale=5.0, strength=0.3, scheduler="euler")}
    for rid, r in reqs.items():
        h.engine.add(rid, parse_params(h.info, dict(height=32, width=32, **r)), prompt=f"a cat {rid}", image=image)
    h.add("t", "a dog", height=32, width=32, seed=4, num_inference_steps=3)
    got = h.pixels(h.run())
    cls = StableDiffusionXLImg2ImgPipeline if name == "sdxl" else StableDiffusionImg2ImgPipeline
    ref_pipe = reference(h, cls)
    own = ref_pipe.scheduler
    for rid, r in reqs.items():
        if r.get("scheduler"):
            ref_pipe.scheduler = SCHEDULERS[r["scheduler"]].from_config(own.config)
        ref = ref_pipe(f"a cat {rid}", image=image, strength=r["strength"], num_inference_steps=r["num_inference_steps"],
                       guidance_scale=r["guidance_scale"], generator=torch.Generator().manual_seed(r["seed"]),
                       output_type="np").images[0]
        ref_pipe.scheduler = own
        assert np.abs(got[rid] - ref).max() < TOL, rid
    assert got["t"].shape == (32, 32, 3)


@pytest.mark.parametrize("name", ["sd3", "flux"])
def test_flow_image_to_image_equals_diffusers(harness, name):
    """SD3 and FLUX start from an image as their img2img pipelines do (shifted VAE latents,
    scale_noise, a fractional share of the steps), batched with text-to-image requests."""
    import torch
    from diffusers import FluxImg2ImgPipeline, StableDiffusion3Img2ImgPipeline
    from PIL import Image

    from omnistage.diffusion.params import parse_params
    h = harness(name)
    g = torch.Generator().manual_seed(1)
    image = Image.fromarray((torch.rand(32, 48, 3, generator=g) * 255).byte().numpy())
    guidance = 3.5 if name == "flux" else 5.0
    reqs = {"a": dict(seed=1, num_inference_steps=5, strength=0.5), "b": dict(seed=2, num_inference_steps=3, strength=0.9)}
    for rid, r in reqs.items():
        h.engine.add(rid, parse_params(h.info, dict(height=32, width=48, guidance_scale=guidance, **r)),
                     prompt=f"a house {rid}", image=image)
    h.add("t", "a tree", height=32, width=48, seed=4, num_inference_steps=2, guidance_scale=guidance)
    got = h.pixels(h.run())
    cls = FluxImg2ImgPipeline if name == "flux" else StableDiffusion3Img2ImgPipeline
    ref_pipe = reference(h, cls)
    for rid, r in reqs.items():
        ref = ref_pipe(f"a house {rid}", image=image, strength=r["strength"], height=32, width=48,
                       num_inference_steps=r["num_inference_steps"], guidance_scale=guidance,
                       generator=torch.Generator().manual_seed(r["seed"]), output_type="np").images[0]
        assert np.abs(got[rid] - ref).max() < TOL, rid
    assert got["t"].shape == (32, 48, 3)


INPAINT = {"sd": "StableDiffusionInpaintPipeline", "sdxl": "StableDiffusionXLInpaintPipeline",
           "sd3": "StableDiffusion3InpaintPipeline", "flux": "FluxInpaintPipeline"}


def _mask(height: int, width: int):
    """A grayscale mask, white (repaint) over a rectangle."""
    from PIL import Image, ImageDraw
    mask = Image.new("L", (width, height), 0)
    ImageDraw.Draw(mask).rectangle((4, 8, width - 9, height - 5), fill=255)
    return mask


@pytest.mark.parametrize("name", list(INPAINT))
def test_inpainting_beside_other_requests_equals_the_inpaint_pipeline(harness, name):
    """Masked edits (full and partial strength, an ancestral scheduler where the family has one)
    batched with an img2img and a text-to-image request, each equal to the family's inpaint
    pipeline; outside the mask the result is the picture's latents, so the blend is not a no-op."""
    import diffusers
    import torch
    from PIL import Image

    from omnistage.diffusion.params import parse_params
    h = harness(name)
    flow = name in ("sd3", "flux")
    g = torch.Generator().manual_seed(2)
    image = Image.fromarray((torch.rand(32, 48, 3, generator=g) * 255).byte().numpy())
    mask = _mask(32, 48)
    guidance = 3.5 if name == "flux" else 5.0
    reqs = {"a": dict(seed=1, num_inference_steps=4, strength=1.0),
            "b": dict(seed=2, num_inference_steps=5, strength=0.6, **({} if flow else {"scheduler": "euler_a"}))}
    for rid, r in reqs.items():
        h.engine.add(rid, parse_params(h.info, dict(height=32, width=48, guidance_scale=guidance, **r)),
                     prompt=f"a boat {rid}", image=image, mask=mask)
    h.engine.add("i", parse_params(h.info, dict(height=32, width=48, guidance_scale=guidance, seed=3,
                                                num_inference_steps=3, strength=0.7)), prompt="a boat i", image=image)
    h.add("t", "a lake", height=32, width=48, seed=4, num_inference_steps=2, guidance_scale=guidance)
    latents = h.run()
    got = h.pixels(latents)
    # StableDiffusion3InpaintPipeline decodes without the VAE's shift factor (its text-to-image
    # and img2img pipelines add it, as the encoding subtracts it): SD3 compares the latents.
    output = "latent" if name == "sd3" else "np"
    cls = getattr(diffusers, INPAINT[name])
    ref_pipe = reference(h, cls)
    own = ref_pipe.scheduler
    for rid, r in reqs.items():
        if r.get("scheduler"):
            ref_pipe.scheduler = SCHEDULERS[r["scheduler"]].from_config(own.config)
        ref = ref_pipe(f"a boat {rid}", image=image, mask_image=mask, strength=r["strength"], height=32, width=48,
                       num_inference_steps=r["num_inference_steps"], guidance_scale=guidance,
                       generator=torch.Generator().manual_seed(r["seed"]), output_type=output).images[0]
        ref_pipe.scheduler = own
        ours = latents[rid][0].numpy() if name == "sd3" else got[rid]
        assert np.abs(ours - np.asarray(ref)).max() < TOL, rid
    # Outside the mask the result is the picture's own latents (the last step puts them back), inside it is not.
    with torch.no_grad():
        init = h.family.inpaint_latents(image, 32, 48, torch.Generator().manual_seed(reqs["b"]["seed"]))
    keep = (h.family.latent_mask(mask, 32, 48) == 0).expand_as(init)
    assert 0 < keep.sum() < keep.numel()
    assert torch.allclose(latents["b"][keep], init[keep], atol=1e-5)
    assert (latents["b"][~keep] - init[~keep]).abs().max() > 0.1


def test_a_mask_needs_an_image(harness):
    from PIL import Image

    from omnistage.diffusion.params import parse_params
    h = harness("sd")
    with pytest.raises(ValueError, match="mask"):
        h.engine.add("m", parse_params(h.info, {}), prompt="x", mask=Image.new("L", (16, 16)))


def test_image_to_image_refuses_a_strength_that_runs_no_step(harness):
    from PIL import Image

    from omnistage.diffusion.params import parse_params
    h = harness("sd")
    with pytest.raises(RequestRejected, match="strength") as info:
        h.engine.add("z", parse_params(h.info, dict(num_inference_steps=2, strength=0.2)), prompt="x",
                     image=Image.new("RGB", (16, 16)))
    assert info.value.param == "strength"


def test_wan_video_batch_equals_diffusers(harness, diffusers_reference):
    h = harness("wan")
    reqs = {"a": dict(seed=1, num_inference_steps=3, guidance_scale=5.0, num_frames=9),
            "b": dict(seed=2, num_inference_steps=4, guidance_scale=1.0, num_frames=9),
            "c": dict(seed=3, num_inference_steps=2, guidance_scale=4.0, num_frames=5)}
    for rid, r in reqs.items():
        h.add(rid, f"a dog running {rid}", height=32, width=32, **r)
    got = h.pixels(h.run())
    for rid, r in reqs.items():
        ref = diffusers_reference("wan", f"a dog running {rid}", r["seed"], height=32, width=32, **{
            k: v for k, v in r.items() if k != "seed"})
        assert got[rid].shape == (r["num_frames"], 32, 32, 3)
        assert np.abs(got[rid] - ref).max() < TOL, rid


def test_a_new_size_does_not_wait_for_a_busy_bucket(harness):
    h = harness("sd", max_batch=4)
    for i in range(4):
        h.add(f"big{i}", "a cat", height=32, width=32, num_inference_steps=20, guidance_scale=1.0, seed=i)
    h.engine.step()
    h.add("small", "a dog", height=16, width=16, num_inference_steps=2, guidance_scale=1.0, seed=9)
    finished = []
    for _ in range(6):
        finished += [f.rid for f in h.engine.step()]
    assert finished == ["small"]  # done while the 20-step bucket is still running
    assert {rid for rid in h.engine.running} == {f"big{i}" for i in range(4)}
    for i in range(4):
        h.engine.abort(f"big{i}")
    assert not h.engine.has_work()


def test_requests_join_between_steps_and_running_is_capped_per_shape(harness):
    h = harness("sd", max_batch=2)
    for i in range(3):
        h.add(f"r{i}", "a cat", height=16, width=16, num_inference_steps=3, guidance_scale=1.0, seed=i)
    h.engine.step()
    assert set(h.engine.running) == {"r0", "r1"} and [j.rid for j in h.engine.waiting] == ["r2"]
    order = []
    while h.engine.has_work():
        order += [f.rid for f in h.engine.step()]
    assert sorted(order[:2]) == ["r0", "r1"] and order[2] == "r2"


def test_abort_forgets_waiting_and_running(harness):
    h = harness("sd")
    h.add("x", "a", height=16, width=16, num_inference_steps=5, seed=0)
    h.add("y", "b", height=16, width=16, num_inference_steps=5, seed=0)
    h.engine.step()
    h.add("z", "c", height=16, width=16, num_inference_steps=5, seed=0)
    for rid in "xyz":
        h.engine.abort(rid)
    assert not h.engine.has_work() and h.engine.step() == []


def test_prompt_embeddings_are_cached_across_requests(harness):
    h = harness("sd")
    misses = h.text.cache.misses
    for i in range(3):  # together: the prompt and "" are encoded once each
        h.add(f"c{i}", "the same prompt!", height=16, width=16, num_inference_steps=1, guidance_scale=3.0, seed=i)
    h.run()
    assert h.text.cache.misses - misses <= 2
    hits = h.text.cache.hits
    h.add("later", "the same prompt!", height=16, width=16, num_inference_steps=1, guidance_scale=3.0, seed=5)
    h.run()
    assert h.text.cache.hits - hits == 2


@pytest.mark.parametrize("missing", ["prompt-and-embeds", "neither"])
def test_add_needs_exactly_one_of_prompt_or_embeds(harness, missing):
    from omnistage.diffusion.params import parse_params
    h = harness("sd")
    p = parse_params(h.info, {})
    with pytest.raises(ValueError):
        if missing == "neither":
            h.engine.add("q", p)
        else:
            h.engine.add("q", p, prompt="a", embeds=({}, None))


def test_sdxl_float16_decodes_with_the_vae_upcast_as_the_pipeline_does():
    """The SDXL VAE overflows in float16; like the pipeline, the family decodes in float32."""
    import torch
    from diffusers import AutoencoderKL

    from omnistage.diffusion.registry import family_class
    from omnistage.models.tiny import ensure_tiny
    path = str(ensure_tiny("sdxl"))
    family = family_class(path)(path, {"vae"}, torch.float16, "cpu")
    assert family.pipe.vae.config.force_upcast and family.pipe.vae.dtype == torch.float16
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)).to(torch.float16)
    # The pipeline's way: weights loaded in float16, the VAE then upcast to float32.
    reference = AutoencoderKL.from_pretrained(path, subfolder="vae", dtype=torch.float16).to(torch.float32).eval()
    with torch.inference_mode():
        pixels = family.decode(latents)
        image = reference.decode(latents.float() / reference.config.scaling_factor, return_dict=False)[0]
    want = family.pipe.image_processor.postprocess(image, output_type="np")
    assert family.pipe.vae.dtype == torch.float32
    assert np.abs(pixels - want).max() < 1e-5


@pytest.mark.parametrize("name", ["sd", "sd3"])
def test_a_seeded_request_is_independent_of_requests_joining_and_leaving_its_steps(harness, name):
    """docs/diffusion.md: the same seeded request alone and while others join, leave and are
    aborted mid-trajectory differs only by batch-size numerics (measured <= 1.2e-6 on pixels)."""
    h = harness(name)
    h.add("a", "a photo of a cat", seed=7, num_inference_steps=20)
    alone = np.asarray(h.pixels(h.run())["a"])
    h.add("a", "a photo of a cat", seed=7, num_inference_steps=20)
    for _ in range(3):
        h.engine.step()
    for i in range(5):  # join at step 3, leave after 8-12 steps
        h.add(f"j{i}", f"thing {i}", seed=i, num_inference_steps=8 + i)
    for _ in range(4):
        h.engine.step()
    h.engine.abort("j1")
    h.add("late", "a late one", seed=99, num_inference_steps=6)
    together = np.asarray(h.pixels(h.run())["a"])
    assert np.abs(together - alone).max() <= 1e-5
