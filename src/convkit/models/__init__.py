"""Whole CNNs: ``build_cnn`` assembles layers into a model that records its own
configuration, and ``load_model`` rebuilds one from a checkpoint."""

from .factory import CNN, build_cnn
from .loading import load_model

__all__ = ["CNN", "build_cnn", "load_model"]
