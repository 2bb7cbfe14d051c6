"""Activations for timm's ``Mlp``, whose ``act_layer`` is a class it instantiates."""

from torch import nn


class TanhGELU(nn.GELU):
    """GELU with the tanh approximation (OpenSora's MLPs)."""

    def __init__(self) -> None:
        super().__init__(approximate="tanh")
