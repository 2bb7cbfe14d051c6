"""Inference without Lightning or Hydra: load a trained Tora and generate from prompts,
trajectories and an optional first frame."""

from tora.inference.loading import load_components
from tora.inference.pipeline import (
    Conditioning,
    GenerationConfig,
    GenerationRequest,
    TextCondition,
    ToraPipeline,
)

__all__ = [
    "Conditioning",
    "GenerationConfig",
    "GenerationRequest",
    "TextCondition",
    "ToraPipeline",
    "load_components",
]
