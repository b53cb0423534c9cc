"""Model families: how each diffusers pipeline encodes text, shapes latents, denoises and decodes.

A family wraps a diffusers pipeline object loaded from a model directory (``model_index.json``)
and calls the pipeline's own methods where they exist (``encode_prompt``, the image and video
processors), so the maths is the reference library's; what a family adds is the batched form of
one denoising step, where every row may sit at its own timestep.

Only the components a stage needs are loaded (``roles``): a text-encode stage holds the text
encoders, a VAE-decode stage the VAE. Shapes and limits come from the config files alone.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import torch
from diffusers import ConfigMixin, DiffusionPipeline
from diffusers.image_processor import VaeImageProcessor
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_img2img import retrieve_latents
from diffusers.utils.torch_utils import randn_tensor

Embeds = dict[str, torch.Tensor]  # one prompt's embeddings: "embeds" (+ "pooled" for SD3, SDXL, FLUX)
ROLES = ("text", "denoise", "vae")


def load_config(path: str, subfolder: str | None = None) -> Mapping[str, Any]:
    """model_index.json, or a component's config.json (works for local dirs and hub ids)."""
    if subfolder is None:
        return DiffusionPipeline.load_config(path)
    return _ComponentConfig.load_config(path, subfolder=subfolder)


# Step caching's default threshold by what the model predicts (docs/diffusion.md): an epsilon-
# predicting UNet's outputs change more from step to step than a flow-matching transformer's.
CACHE_THRESHOLDS = {"epsilon": 0.2, "flow": 0.1}


class _ComponentConfig(ConfigMixin):
    """Reads a component's ``config.json`` without knowing (or importing) its class."""

    config_name = "config.json"


class Family:
    name: ClassVar[str]
    output: ClassVar[str] = "image"
    prediction: ClassVar[str] = "epsilon"
    components: ClassVar[Mapping[str, tuple[str, ...]]]  # role -> pipeline component names
    unused: ClassVar[tuple[str, ...]] = ()  # components no stage runs (safety checker, ...)
    defaults: ClassVar[Mapping[str, Any]]  # steps, guidance (+ height/width/num_frames if fixed)
    step_with_generator: ClassVar[bool] = False  # the pipeline passes eta/generator to step()
    begin_index_zero: ClassVar[bool] = False  # the pipeline calls scheduler.set_begin_index(0)
    latent_dtype: ClassVar[torch.dtype | None] = None  # None: the model's dtype
    # guidance_scale > 1 runs classifier-free guidance (an unconditional row per request, from
    # the negative prompt); False: guidance is a model input or absent (FLUX), no negative prompt.
    classifier_free: ClassVar[bool] = True
    negative_required: ClassVar[bool] = False  # guidance runs only for a request with a negative prompt

    def __init__(self, path: str, roles: set[str], dtype: torch.dtype, device: str,
                 max_sequence_length: int | None = None) -> None:
        self.path, self.roles, self.dtype, self.device = path, roles, dtype, device
        self.max_sequence_length = max_sequence_length
        index = load_config(path)
        skip = {name: None for role, names in self.components.items() if role not in roles for name in names}
        skip.update({name: None for name in self.unused if name in index})
        self.pipe = DiffusionPipeline.from_pretrained(path, dtype=dtype, **skip).to(device)
        self.pipe.set_progress_bar_config(disable=True)
        self.vae_config = load_config(path, "vae")
        self.denoiser_config = load_config(path, self.components["denoise"][0])

    # --- facts -------------------------------------------------------------------------
    @property
    def vae_scale(self) -> int:
        return 2 ** (len(self.vae_config["block_out_channels"]) - 1)

    @property
    def size_multiple(self) -> int:
        return self.vae_scale

    def info(self) -> dict[str, Any]:
        return {"family": self.name, "output": self.output, "size_multiple": self.size_multiple,
                "vae_scale": self.vae_scale, "schedulers": [], "classifier_free": self.classifier_free,
                "negative_required": self.negative_required,
                "takes_image": self.takes_image, **self.defaults}

    def latent_shape(self, height: int, width: int, frames: int | None) -> tuple[int, ...]:
        channels = self.denoiser_config["in_channels"]
        return (channels, height // self.vae_scale, width // self.vae_scale)

    # --- text --------------------------------------------------------------------------
    def encode_text(self, texts: list[str]) -> list[Embeds]:
        raise NotImplementedError

    # --- denoising ---------------------------------------------------------------------
    def init_latents(self, shape: tuple[int, ...], generator: torch.Generator, scheduler: Any) -> torch.Tensor:
        dtype = self.latent_dtype or self.dtype
        return randn_tensor((1, *shape), generator=generator, device=torch.device(self.device), dtype=dtype)

    def set_timesteps(self, scheduler: Any, steps: int, shape: tuple[int, ...]) -> None:
        scheduler.set_timesteps(steps, device=self.device)
        if self.begin_index_zero:
            scheduler.set_begin_index(0)

    # --- starting from an image (img2img) ---------------------------------------------
    takes_image: ClassVar[bool] = False

    def image_latents(self, image: Any, height: int, width: int, generator: torch.Generator) -> torch.Tensor:
        """An input image (PIL) as the latents it starts from: preprocessed by the pipeline's image
        processor at the request's size, encoded by the VAE (its posterior sampled with the
        request's generator, as the img2img pipelines do)."""
        raise NotImplementedError

    def noised(self, scheduler: Any, latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``latents`` noised to timestep ``t`` (the first one the request runs)."""
        return scheduler.add_noise(latents, noise, t)

    def first_step(self, steps: int, strength: float) -> int:
        """The step an image-to-image request starts at (its pipeline's ``get_timesteps``)."""
        return steps - min(int(steps * strength), steps)

    # --- inpainting (an input image and a mask; a model of the plain text-to-image kind) -----
    def latent_mask(self, mask: Any, height: int, width: int) -> torch.Tensor:
        """A mask (grayscale PIL, white repaints) on the latent grid: binarized at the request's
        size, then resized (nearest) to the latents, as the inpaint pipelines do."""
        processor = VaeImageProcessor(vae_scale_factor=self.vae_scale, do_normalize=False, do_binarize=True,
                                      do_convert_grayscale=True)
        pixels = processor.preprocess(mask, height=height, width=width)
        grid = torch.nn.functional.interpolate(pixels, size=(height // self.vae_scale, width // self.vae_scale))
        return grid.to(self.device, self.latent_dtype or self.dtype)

    def inpaint_latents(self, image: Any, height: int, width: int, generator: torch.Generator) -> torch.Tensor:
        """The image's latents as the inpaint pipeline makes them (its img2img ones unless it differs)."""
        return self.image_latents(image, height, width, generator)

    def skip_masked_image(self, generator: torch.Generator, height: int, width: int) -> None:
        """Advance ``generator`` past the draw the inpaint pipelines spend on the masked image's
        posterior (its latents feed only dedicated inpainting models), so that every later draw
        (an ancestral scheduler's noise) is the pipeline's."""
        shape = (1, self.vae_config["latent_channels"], height // self.vae_scale, width // self.vae_scale)
        randn_tensor(shape, generator=generator, device=torch.device(self.device), dtype=self.pipe.vae.dtype)

    def inpaint_start(self, scheduler: Any, latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor,
                      strength: float) -> torch.Tensor:
        """Where an inpainting request starts: pure noise at full strength, else the image noised to ``t``."""
        if strength == 1.0:
            return noise * scheduler.init_noise_sigma
        return self.noised(scheduler, latents, noise, t)

    # --- batching -----------------------------------------------------------------------
    def text_key(self, cond: Embeds) -> tuple[Any, ...]:
        """What of a request's embeddings must be equal for it to share a forward: every shape."""
        return tuple((k, tuple(v.shape)) for k, v in sorted(cond.items()))

    def stack(self, rows: list[Embeds]) -> Embeds:
        """The rows' embeddings as one batch."""
        return {k: torch.stack([r[k] for r in rows]) for k in rows[0]}

    def guide(self, uncond: torch.Tensor, cond: torch.Tensor, scale: float) -> torch.Tensor:
        """Classifier-free guidance of one request's two predictions."""
        return uncond + scale * (cond - uncond)

    def row_inputs(self, params: Any) -> Embeds:
        """Per-request model inputs beside the text embeddings (stacked over the batch's rows
        like them): none unless the family takes one, such as FLUX's guidance."""
        return {}

    def scale_input(self, scheduler: Any, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return x

    def denoise(self, x: torch.Tensor, t: torch.Tensor, cond: Embeds) -> torch.Tensor:
        """One model forward over all rows; ``t`` holds each row's timestep."""
        raise NotImplementedError

    # --- decoding ----------------------------------------------------------------------
    def decode(self, latents: torch.Tensor) -> np.ndarray:
        """Latents (B, ...) -> float pixels in [0, 1]: (B, H, W, 3) images or (B, F, H, W, 3) video."""
        raise NotImplementedError


class _FlowImage:
    """Image to image as the flow-matching pipelines (SD3, FLUX) do it: the VAE latents shifted
    and scaled, noised by ``scale_noise``, started from a fractional share of the steps."""

    takes_image = True

    def image_latents(self: Any, image: Any, height: int, width: int, generator: torch.Generator) -> torch.Tensor:
        vae = self.pipe.vae
        pixels = self.pipe.image_processor.preprocess(image, height=height, width=width).to(torch.float32)
        latents = retrieve_latents(vae.encode(pixels.to(self.device, self.dtype)), generator=generator)
        return (latents - vae.config.shift_factor) * vae.config.scaling_factor

    def noised(self, scheduler: Any, latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return scheduler.scale_noise(latents, t, noise)

    def first_step(self, steps: int, strength: float) -> int:
        return int(max(steps - min(steps * strength, steps), 0))

    def inpaint_start(self, scheduler: Any, latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor,
                      strength: float) -> torch.Tensor:
        return noise if strength == 1.0 else self.noised(scheduler, latents, noise, t)


class StableDiffusion(Family):
    """SD 1.x/2.x-style: CLIP text encoder, UNet2DConditionModel (epsilon/v), AutoencoderKL."""

    name = "stable-diffusion"
    components = {"text": ("tokenizer", "text_encoder"), "denoise": ("unet",), "vae": ("vae",)}
    unused = ("safety_checker", "feature_extractor", "image_encoder")
    defaults = {"steps": 50, "guidance": 7.5}
    step_with_generator = True
    takes_image = True

    @property
    def size_multiple(self) -> int:
        return math.lcm(8, self.vae_scale)  # the SD pipeline checks divisibility by 8

    def info(self) -> dict[str, Any]:
        side = self.denoiser_config["sample_size"] * self.vae_scale
        return {**super().info(), "height": side, "width": side}

    def encode_text(self, texts: list[str]) -> list[Embeds]:
        embeds, _ = self.pipe.encode_prompt(texts, self.device, 1, False)
        return [{"embeds": e} for e in embeds]

    def init_latents(self, shape: tuple[int, ...], generator: torch.Generator, scheduler: Any) -> torch.Tensor:
        return super().init_latents(shape, generator, scheduler) * scheduler.init_noise_sigma

    def scale_input(self, scheduler: Any, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return scheduler.scale_model_input(x, t)

    def image_latents(self, image: Any, height: int, width: int, generator: torch.Generator) -> torch.Tensor:
        vae = self.pipe.vae
        size = {} if image.size == (width, height) else {"height": height, "width": width}
        pixels = self.pipe.image_processor.preprocess(image, **size).to(self.device, self.dtype)
        return vae.config.scaling_factor * retrieve_latents(vae.encode(pixels), generator=generator)

    def denoise(self, x: torch.Tensor, t: torch.Tensor, cond: Embeds) -> torch.Tensor:
        return self.pipe.unet(x, t, encoder_hidden_states=cond["embeds"], return_dict=False)[0]

    def decode(self, latents: torch.Tensor) -> np.ndarray:
        vae = self.pipe.vae
        image = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor, return_dict=False)[0]
        return self.pipe.image_processor.postprocess(image, output_type="np")


class StableDiffusionXL(StableDiffusion):
    """SDXL: two CLIP encoders (penultimate hidden states side by side, the second's pooled
    projection), a UNet with ``text_time`` micro-conditioning, AutoencoderKL."""

    name = "stable-diffusion-xl"
    components = {"text": ("tokenizer", "tokenizer_2", "text_encoder", "text_encoder_2"), "denoise": ("unet",),
                  "vae": ("vae",)}
    unused = ("image_encoder", "feature_extractor")
    defaults = {"steps": 50, "guidance": 5.0}

    def encode_text(self, texts: list[str]) -> list[Embeds]:
        """An empty string (no negative prompt: prompts themselves are never empty) becomes zeros
        when the checkpoint says so (``force_zeros_for_empty_prompt``), as the pipeline does for
        a negative prompt it was not given."""
        embeds, _, pooled, _ = self.pipe.encode_prompt(texts, device=self.device, num_images_per_prompt=1,
                                                       do_classifier_free_guidance=False)
        zero = self.pipe.config.get("force_zeros_for_empty_prompt", False)
        return [{"embeds": e * 0, "pooled": p * 0} if zero and text == "" else {"embeds": e, "pooled": p}
                for text, e, p in zip(texts, embeds, pooled)]

    def denoise(self, x: torch.Tensor, t: torch.Tensor, cond: Embeds) -> torch.Tensor:
        # Every row of a step shares its size (the engine batches one latent shape); the
        # original and target size are the request's, the crop (0, 0): the pipeline's defaults.
        height, width = x.shape[-2] * self.vae_scale, x.shape[-1] * self.vae_scale
        time_ids = torch.tensor([[height, width, 0, 0, height, width]], dtype=cond["embeds"].dtype,
                                device=x.device).repeat(x.shape[0], 1)
        return self.pipe.unet(x, t, encoder_hidden_states=cond["embeds"], return_dict=False,
                              added_cond_kwargs={"text_embeds": cond["pooled"], "time_ids": time_ids})[0]

    def image_latents(self, image: Any, height: int, width: int, generator: torch.Generator) -> torch.Tensor:
        """As StableDiffusionXLImg2ImgPipeline (a base checkpoint: no aesthetic score): the image
        in the model's dtype, encoded by the (upcast) VAE, scaled (or normalized by the VAE's
        latents mean and std when it has them)."""
        vae = self._upcast_vae()
        latents = self._encoded(image, height, width, generator)
        if vae.config.get("latents_mean") is not None and vae.config.get("latents_std") is not None:
            mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1).to(latents.device, latents.dtype)
            std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1).to(latents.device, latents.dtype)
            return (latents - mean) * vae.config.scaling_factor / std
        return vae.config.scaling_factor * latents

    def inpaint_latents(self, image: Any, height: int, width: int, generator: torch.Generator) -> torch.Tensor:
        """As StableDiffusionXLInpaintPipeline: scaled only, never normalized by mean and std."""
        return self._upcast_vae().config.scaling_factor * self._encoded(image, height, width, generator)

    def _encoded(self, image: Any, height: int, width: int, generator: torch.Generator) -> torch.Tensor:
        """The image's VAE posterior sample (upcast VAE), in the model's dtype."""
        vae = self._upcast_vae()
        size = {} if image.size == (width, height) else {"height": height, "width": width}
        pixels = self.pipe.image_processor.preprocess(image, **size).to(self.device, self.dtype)
        return retrieve_latents(vae.encode(pixels.to(vae.dtype)), generator=generator).to(self.dtype)

    def _upcast_vae(self) -> Any:
        vae = self.pipe.vae
        if vae.dtype == torch.float16 and vae.config.get("force_upcast"):
            vae.to(torch.float32)  # the SDXL VAE overflows in float16; the pipeline upcasts it too
        return vae

    def decode(self, latents: torch.Tensor) -> np.ndarray:
        vae = self._upcast_vae()
        latents = latents.to(vae.dtype)
        if vae.config.get("latents_mean") is not None and vae.config.get("latents_std") is not None:
            mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1).to(latents.device, latents.dtype)
            std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1).to(latents.device, latents.dtype)
            latents = latents * std / vae.config.scaling_factor + mean
        else:
            latents = latents / vae.config.scaling_factor
        return self.pipe.image_processor.postprocess(vae.decode(latents, return_dict=False)[0], output_type="np")


class StableDiffusion3(_FlowImage, Family):
    """SD3 (MMDiT): two CLIP encoders + T5, SD3Transformer2DModel, flow matching."""

    name = "stable-diffusion-3"
    prediction = "flow"
    components = {"text": ("tokenizer", "tokenizer_2", "tokenizer_3", "text_encoder", "text_encoder_2",
                           "text_encoder_3"), "denoise": ("transformer",), "vae": ("vae",)}
    unused = ("image_encoder", "feature_extractor")
    defaults = {"steps": 28, "guidance": 7.0}

    @property
    def size_multiple(self) -> int:
        return self.vae_scale * self.denoiser_config["patch_size"]

    def info(self) -> dict[str, Any]:
        side = self.denoiser_config["sample_size"] * self.vae_scale
        return {**super().info(), "height": side, "width": side}

    def encode_text(self, texts: list[str]) -> list[Embeds]:
        length = self.max_sequence_length or 256
        embeds, _, pooled, _ = self.pipe.encode_prompt(texts, None, None, device=self.device,
                                                       do_classifier_free_guidance=False, max_sequence_length=length)
        return [{"embeds": e, "pooled": p} for e, p in zip(embeds, pooled)]

    def set_timesteps(self, scheduler: Any, steps: int, shape: tuple[int, ...]) -> None:
        config = scheduler.config
        if not config.get("use_dynamic_shifting"):
            return super().set_timesteps(scheduler, steps, shape)
        from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import calculate_shift
        patch = self.denoiser_config["patch_size"]
        seq = (shape[-2] // patch) * (shape[-1] // patch)
        mu = calculate_shift(seq, config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096),
                             config.get("base_shift", 0.5), config.get("max_shift", 1.16))
        scheduler.set_timesteps(steps, device=self.device, mu=mu)

    def denoise(self, x: torch.Tensor, t: torch.Tensor, cond: Embeds) -> torch.Tensor:
        return self.pipe.transformer(hidden_states=x, timestep=t, encoder_hidden_states=cond["embeds"],
                                     pooled_projections=cond["pooled"], return_dict=False)[0]

    def decode(self, latents: torch.Tensor) -> np.ndarray:
        vae = self.pipe.vae
        latents = latents.to(vae.dtype) / vae.config.scaling_factor + vae.config.shift_factor
        return self.pipe.image_processor.postprocess(vae.decode(latents, return_dict=False)[0], output_type="np")


class Wan(Family):
    """Wan 2.1 text-to-video: UMT5 encoder, WanTransformer3DModel, AutoencoderKLWan, flow matching."""

    name = "wan"
    output = "video"
    prediction = "flow"
    components = {"text": ("tokenizer", "text_encoder"), "denoise": ("transformer",), "vae": ("vae",)}
    unused = ("transformer_2", "image_encoder", "image_processor")
    defaults = {"steps": 50, "guidance": 5.0, "height": 480, "width": 832, "num_frames": 81, "fps": 16}
    begin_index_zero = True
    latent_dtype = torch.float32  # the Wan pipeline keeps latents in float32, casting per forward

    @property
    def vae_scale(self) -> int:
        return 2 ** len(self.vae_config["temperal_downsample"])

    @property
    def temporal_factor(self) -> int:
        return 2 ** sum(self.vae_config["temperal_downsample"])

    @property
    def size_multiple(self) -> int:
        return self.vae_scale * self.denoiser_config["patch_size"][1]

    def info(self) -> dict[str, Any]:
        return {**super().info(), "temporal_factor": self.temporal_factor}

    def latent_shape(self, height: int, width: int, frames: int | None) -> tuple[int, ...]:
        assert frames is not None
        channels = self.denoiser_config["in_channels"]
        return (channels, (frames - 1) // self.temporal_factor + 1, height // self.vae_scale, width // self.vae_scale)

    def encode_text(self, texts: list[str]) -> list[Embeds]:
        embeds, _ = self.pipe.encode_prompt(texts, do_classifier_free_guidance=False, device=self.device,
                                            max_sequence_length=self.max_sequence_length or 512)
        return [{"embeds": e} for e in embeds]

    def denoise(self, x: torch.Tensor, t: torch.Tensor, cond: Embeds) -> torch.Tensor:
        model = self.pipe.transformer
        return model(hidden_states=x.to(model.dtype), timestep=t, encoder_hidden_states=cond["embeds"],
                     return_dict=False)[0]

    def decode(self, latents: torch.Tensor) -> np.ndarray:
        vae = self.pipe.vae
        latents = latents.to(vae.dtype)
        z = vae.config.z_dim
        mean = torch.tensor(vae.config.latents_mean).view(1, z, 1, 1, 1).to(latents.device, latents.dtype)
        inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, z, 1, 1, 1).to(latents.device, latents.dtype)
        video = vae.decode(latents / inv_std + mean, return_dict=False)[0]
        return self.pipe.video_processor.postprocess_video(video, output_type="np")


class Flux(_FlowImage, Family):
    """FLUX.1: CLIP (pooled) + T5, FluxTransformer2DModel over 2x2-packed latents, flow matching
    with a shift that grows with the image's size. Guidance is an input of the model (dev,
    ``guidance_embeds``) or absent (schnell): never classifier-free rows, so no negative prompt.

    Latents stay unpacked (C, H, W) between steps: packing is a permutation, and the noise,
    the Euler update and the VAE see exactly the pipeline's numbers."""

    name = "flux"
    prediction = "flow"
    components = {"text": ("tokenizer", "tokenizer_2", "text_encoder", "text_encoder_2"), "denoise": ("transformer",),
                  "vae": ("vae",)}
    unused = ("image_encoder", "feature_extractor")
    defaults = {"steps": 28, "guidance": 3.5}
    begin_index_zero = True
    classifier_free = False

    @property
    def size_multiple(self) -> int:
        return self.vae_scale * 2

    @property
    def guidance_embeds(self) -> bool:
        return bool(self.denoiser_config.get("guidance_embeds", False))

    def info(self) -> dict[str, Any]:
        side = 128 * self.vae_scale  # the pipeline's default_sample_size
        return {**super().info(), "height": side, "width": side}

    def latent_shape(self, height: int, width: int, frames: int | None) -> tuple[int, ...]:
        return (self.denoiser_config["in_channels"] // 4, height // self.vae_scale, width // self.vae_scale)

    def encode_text(self, texts: list[str]) -> list[Embeds]:
        embeds, pooled, _ = self.pipe.encode_prompt(texts, None, device=self.device,
                                                    max_sequence_length=self.max_sequence_length or 512)
        return [{"embeds": e, "pooled": p} for e, p in zip(embeds, pooled)]

    def row_inputs(self, params: Any) -> Embeds:
        return {"guidance": torch.tensor(params.guidance, dtype=torch.float32)} if self.guidance_embeds else {}

    def set_timesteps(self, scheduler: Any, steps: int, shape: tuple[int, ...]) -> None:
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift
        config = scheduler.config
        sigmas = None if config.get("use_flow_sigmas") else np.linspace(1.0, 1 / steps, steps)
        mu = calculate_shift((shape[-2] // 2) * (shape[-1] // 2), config.get("base_image_seq_len", 256),
                             config.get("max_image_seq_len", 4096), config.get("base_shift", 0.5),
                             config.get("max_shift", 1.15))
        if sigmas is None:
            scheduler.set_timesteps(steps, device=self.device, mu=mu)
        else:
            scheduler.set_timesteps(sigmas=sigmas, device=self.device, mu=mu)
        scheduler.set_begin_index(0)

    def denoise(self, x: torch.Tensor, t: torch.Tensor, cond: Embeds) -> torch.Tensor:
        from diffusers import FluxPipeline
        b, c, h, w = x.shape
        packed = x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)
        text = cond["embeds"]
        img_ids = FluxPipeline._prepare_latent_image_ids(b, h // 2, w // 2, x.device, text.dtype)
        txt_ids = torch.zeros(text.shape[1], 3, device=x.device, dtype=text.dtype)
        pred = self.pipe.transformer(hidden_states=packed, timestep=t.to(x.dtype) / 1000, guidance=cond.get("guidance"),
                                     pooled_projections=cond["pooled"], encoder_hidden_states=text, txt_ids=txt_ids,
                                     img_ids=img_ids, return_dict=False)[0]
        return pred.view(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)

    def decode(self, latents: torch.Tensor) -> np.ndarray:
        vae = self.pipe.vae
        latents = latents.to(vae.dtype) / vae.config.scaling_factor + vae.config.shift_factor
        return self.pipe.image_processor.postprocess(vae.decode(latents, return_dict=False)[0], output_type="np")
