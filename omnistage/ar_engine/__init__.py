"""Autoregressive engine: paged KV cache, continuous batching, prefix caching."""
