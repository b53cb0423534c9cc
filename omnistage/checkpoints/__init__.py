"""Checkpoints: resolving `tiny:` names, local directories and hub ids, and deciding how to load
them."""
from omnistage.checkpoints.refs import TINY_PREFIX, parse_tiny, resolve_model

__all__ = ["TINY_PREFIX", "parse_tiny", "resolve_model"]
