"""Small building blocks shared by the models."""

from tora.models.layers.causal_conv import CausalConv3d, TimeCache

__all__ = ["CausalConv3d", "TimeCache"]
