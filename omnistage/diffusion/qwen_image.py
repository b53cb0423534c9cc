"""Qwen-Image: a Qwen2.5-VL text encoder, QwenImageTransformer2DModel over 2x2-packed latents,
AutoencoderKLQwenImage (a video VAE run on one frame), flow matching with a size-dependent shift.

Its text embeddings have each prompt's own length: a batch pads them with zeros and gives the
transformer a mask, so requests with prompts of any length share a forward (the text's rotary
positions start after the image's, whatever the padding). Guidance is "true CFG": it runs only
for a request with a negative prompt, and the guided prediction is rescaled to the conditional
one's norm, per packed position. Latents stay unpacked (C, H, W) between steps, as FLUX's.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from omnistage.diffusion.families import Embeds, Family, Flux


def _pack(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H/2 * W/2, C * 4), the pipeline's ``_pack_latents``."""
    b, c, h, w = x.shape
    return x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def _unpack(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    b, _, packed = x.shape
    c = packed // 4
    return x.view(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)


class QwenImage(Family):
    name = "qwen-image"
    prediction = "flow"
    components = {"text": ("tokenizer", "text_encoder"), "denoise": ("transformer",), "vae": ("vae",)}
    defaults = {"steps": 50, "guidance": 4.0}  # the pipeline's true_cfg_scale
    begin_index_zero = True
    negative_required = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.denoiser_config.get("guidance_embeds"):
            raise ValueError(f"{self.path}: guidance-distilled Qwen-Image transformers (guidance_embeds) are not "
                             "supported yet")

    @property
    def vae_scale(self) -> int:
        return 2 ** len(self.vae_config["temperal_downsample"])

    @property
    def size_multiple(self) -> int:
        return self.vae_scale * 2

    def info(self) -> dict[str, Any]:
        side = 128 * self.vae_scale  # the pipeline's default_sample_size
        return {**super().info(), "height": side, "width": side}

    def latent_shape(self, height: int, width: int, frames: int | None) -> tuple[int, ...]:
        return (self.denoiser_config["in_channels"] // 4, height // self.vae_scale, width // self.vae_scale)

    set_timesteps = Flux.set_timesteps  # the same sigmas and shift

    # --- text ----------------------------------------------------------------------------
    def encode_text(self, texts: list[str]) -> list[Embeds]:
        """Each prompt's embeddings at its own length (the pipeline pads a batch of them)."""
        embeds, mask = self.pipe.encode_prompt(texts, device=self.device,
                                               max_sequence_length=self.max_sequence_length or 512)
        lengths = [embeds.shape[1]] * len(texts) if mask is None else mask.sum(dim=1).tolist()
        return [{"embeds": e[:n]} for e, n in zip(embeds, lengths)]

    def text_key(self, cond: Embeds) -> tuple[Any, ...]:
        return (cond["embeds"].shape[-1],)  # any length: a batch is padded

    def stack(self, rows: list[Embeds]) -> Embeds:
        """Embeddings padded with zeros to the longest, and their mask (None when none is padded,
        as the pipeline passes it)."""
        longest = max(r["embeds"].shape[0] for r in rows)
        embeds = torch.stack([torch.nn.functional.pad(r["embeds"], (0, 0, 0, longest - r["embeds"].shape[0]))
                              for r in rows])
        if all(r["embeds"].shape[0] == longest for r in rows):
            return {"embeds": embeds}
        lengths = torch.tensor([r["embeds"].shape[0] for r in rows], device=embeds.device)
        return {"embeds": embeds, "mask": (torch.arange(longest, device=embeds.device) < lengths[:, None]).long()}

    def guide(self, uncond: torch.Tensor, cond: torch.Tensor, scale: float) -> torch.Tensor:
        h, w = cond.shape[-2:]
        packed, combined = _pack(cond), _pack(uncond + scale * (cond - uncond))
        rescaled = combined * (torch.norm(packed, dim=-1, keepdim=True) / torch.norm(combined, dim=-1, keepdim=True))
        return _unpack(rescaled, h, w)

    # --- denoising and decoding ---------------------------------------------------------
    def denoise(self, x: torch.Tensor, t: torch.Tensor, cond: Embeds) -> torch.Tensor:
        b, _, h, w = x.shape
        pred = self.pipe.transformer(hidden_states=_pack(x), timestep=t.to(x.dtype) / 1000, guidance=None,
                                     encoder_hidden_states_mask=cond.get("mask"), encoder_hidden_states=cond["embeds"],
                                     img_shapes=[[(1, h // 2, w // 2)]] * b, return_dict=False)[0]
        return _unpack(pred, h, w)

    def decode(self, latents: torch.Tensor) -> np.ndarray:
        vae = self.pipe.vae
        latents = latents.to(vae.dtype).unsqueeze(2)  # one frame
        z = vae.config.z_dim
        mean = torch.tensor(vae.config.latents_mean).view(1, z, 1, 1, 1).to(latents.device, latents.dtype)
        inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, z, 1, 1, 1).to(latents.device, latents.dtype)
        image = vae.decode(latents / inv_std + mean, return_dict=False)[0][:, :, 0]
        return self.pipe.image_processor.postprocess(image, output_type="np")
