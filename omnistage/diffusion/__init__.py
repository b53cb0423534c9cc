"""Step-batched diffusion: per-request schedulers, batched denoiser, text-encode and VAE decode."""
