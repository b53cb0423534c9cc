"""Checkpoints: resolving `tiny:` names, local directories and hub ids, and deciding how to load
them."""
from omnistage.checkpoints.refs import parse_tiny, resolve_model

__all__ = ["parse_tiny", "resolve_model"]
