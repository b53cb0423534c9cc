"""The tiny-model generator: seeded random-weight checkpoints of real architectures (`omnistage tiny-models`)."""
