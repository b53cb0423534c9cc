"""Step-batched diffusion engine and its text-encode / VAE-decode stages."""
