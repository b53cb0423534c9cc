"""omnistage: serve any-to-any multimodal models as a graph of independently batched stages."""
from omnistage.pipeline import Pipeline

__all__ = ["Pipeline"]
__version__ = "0.1.0"
