"""Tiny diffusers checkpoints (random weights, real classes), saved as pipeline directories."""
from __future__ import annotations

from pathlib import Path

from omnistage.models.tiny_parts import QWEN2_5_VISION, vl_model
from omnistage.models.tokenizer import build_tokenizer


def _tiny_vae(latent_channels: int = 4, **extra):  # noqa: ANN003, ANN202 - AutoencoderKL keyword arguments
    from diffusers import AutoencoderKL
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=latent_channels, block_out_channels=(16, 32),
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         norm_num_groups=8, **extra).eval()


def build_sd(out: Path) -> None:
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel
    tok = build_tokenizer(model_max_length=16)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=16, projection_dim=32, pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id)).eval()
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8).eval()
    vae = _tiny_vae(sample_size=16)
    scheduler = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tok, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(out)


def build_sdxl(out: Path) -> None:
    """StableDiffusionXLPipeline: CLIP + CLIP with projection (hidden states side by side, 64
    wide), a UNet with text_time micro-conditioning (pooled 32 + 6 size ids x 8), Euler."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection
    tok = build_tokenizer(model_max_length=16)
    clip = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                max_position_embeddings=16, projection_dim=32, pad_token_id=tok.pad_token_id,
                eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=64, attention_head_dim=8, norm_num_groups=8, use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=8, projection_class_embeddings_input_dim=80).eval()
    scheduler = EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                       steps_offset=1, timestep_spacing="leading")
    pipe = StableDiffusionXLPipeline(
        vae=_tiny_vae(sample_size=16), text_encoder=CLIPTextModel(CLIPTextConfig(**clip)).eval(), tokenizer=tok,
        text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(**clip)).eval(), tokenizer_2=tok, unet=unet,
        scheduler=scheduler, force_zeros_for_empty_prompt=True, add_watermarker=False)
    pipe.save_pretrained(out)


def _t5_config(tok, cls):  # noqa: ANN001, ANN202
    return cls(vocab_size=len(tok), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
               relative_attention_num_buckets=8, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
               decoder_start_token_id=tok.pad_token_id)


def build_sd3(out: Path) -> None:
    """StableDiffusion3Pipeline: two CLIP text encoders with projection, T5, an MMDiT, flow matching;
    16 latent channels, as SD3's VAE has (its inpaint pipeline takes no other count)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel
    tok, t5_tok = build_tokenizer(model_max_length=16), build_tokenizer(model_max_length=32)

    def clip() -> CLIPTextModelWithProjection:
        return CLIPTextModelWithProjection(CLIPTextConfig(
            vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
            max_position_embeddings=16, projection_dim=32, pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id)).eval()

    transformer = SD3Transformer2DModel(
        sample_size=16, patch_size=2, in_channels=16, out_channels=16, num_layers=2, attention_head_dim=8,
        num_attention_heads=4, joint_attention_dim=32, caption_projection_dim=32, pooled_projection_dim=64,
        pos_embed_max_size=32).eval()
    vae = _tiny_vae(16, sample_size=32, shift_factor=0.0609, scaling_factor=1.5035, use_quant_conv=False,
                    use_post_quant_conv=False)
    pipe = StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=vae,
        text_encoder=clip(), tokenizer=tok, text_encoder_2=clip(), tokenizer_2=tok,
        text_encoder_3=T5EncoderModel(_t5_config(t5_tok, T5Config)).eval(), tokenizer_3=t5_tok)
    pipe.save_pretrained(out)


def build_wan(out: Path) -> None:
    """WanPipeline (Wan 2.1 text-to-video): UMT5 encoder, 3D transformer, causal video VAE."""
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel
    tok = build_tokenizer(model_max_length=32)
    vae = AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True], latents_mean=[0.1, -0.1, 0.0, 0.2],
                           latents_std=[1.5, 2.0, 1.0, 2.5]).eval()
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4,
        text_dim=32, freq_dim=32, ffn_dim=32, num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32).eval()
    pipe = WanPipeline(tokenizer=tok, text_encoder=UMT5EncoderModel(_t5_config(tok, UMT5Config)).eval(), vae=vae,
                       transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=5.0))
    pipe.save_pretrained(out)
def build_flux(out: Path) -> None:
    """FluxPipeline (FLUX.1-dev layout): CLIP (pooled) + T5, a FluxTransformer2DModel with
    embedded guidance, a 4-channel VAE with shift and scale, flow matching with dynamic shift."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel
    tok, t5_tok = build_tokenizer(model_max_length=16), build_tokenizer(model_max_length=32)
    clip = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=16, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
        bos_token_id=tok.eos_token_id)).eval()
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=True, axes_dims_rope=(4, 6, 6)).eval()
    vae = _tiny_vae(sample_size=32, shift_factor=0.1159, scaling_factor=0.3611, use_quant_conv=False,
                    use_post_quant_conv=False)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                base_image_seq_len=256, max_image_seq_len=4096)
    pipe = FluxPipeline(scheduler=scheduler, vae=vae, text_encoder=clip, tokenizer=tok,
                        text_encoder_2=T5EncoderModel(_t5_config(t5_tok, T5Config)).eval(), tokenizer_2=t5_tok,
                        transformer=transformer)
    pipe.save_pretrained(out)


def build_qwen_image(out: Path) -> None:
    """QwenImagePipeline: a tiny Qwen2.5-VL as its text encoder (the last hidden states of the
    prompt in the pipeline's template), QwenImageTransformer2DModel over 2x2-packed 4-channel
    latents, AutoencoderKLQwenImage with latents mean and std, flow matching with dynamic shift."""
    from diffusers import (AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImagePipeline,
                           QwenImageTransformer2DModel)
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    tok = build_tokenizer()
    text_encoder = vl_model(tok, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, QWEN2_5_VISION)
    transformer = QwenImageTransformer2DModel(
        patch_size=2, in_channels=16, out_channels=4, num_layers=2, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=text_encoder.config.text_config.hidden_size, guidance_embeds=False,
        axes_dims_rope=(8, 4, 4)).eval()
    vae = AutoencoderKLQwenImage(base_dim=24, z_dim=4, dim_mult=[1, 2, 4], num_res_blocks=1,
                                 temperal_downsample=[False, True], latents_mean=[0.1, -0.1, 0.0, 0.2],
                                 latents_std=[1.5, 2.0, 1.0, 2.5]).eval()
    scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=0.9,
                                                base_image_seq_len=256, max_image_seq_len=8192)
    QwenImagePipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tok,
                      transformer=transformer).save_pretrained(out)
