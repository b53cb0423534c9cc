"""Checkpoints: resolving `tiny:` names, local directories and hub ids, and deciding how to load
them."""
