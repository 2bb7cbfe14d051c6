"""Tora on CogVideoX, the backbone of the released Tora (alibaba/Tora): diffusers'
transformer and VAE with the release's Trajectory Extractor and fusers injected
(``tora``), and the loader of the released weights (``official``)."""

from tora.models.cogvideox.backbone import CogVideoXBackbone, build_cogvideox
from tora.models.cogvideox.motion import CogVideoXMotionGuidance, ReleaseTrajectoryExtractor
from tora.models.cogvideox.official import (
    OfficialWeights,
    find_layout,
    load_official_tora,
    load_pretrained,
    read_official_tora,
)
from tora.models.cogvideox.tora import CogVideoXTora, ToraTransformer3D
from tora.models.cogvideox.vae import CogVideoXVAE, build_cogvideox_vae

__all__ = [
    "CogVideoXBackbone",
    "CogVideoXMotionGuidance",
    "CogVideoXTora",
    "CogVideoXVAE",
    "OfficialWeights",
    "ReleaseTrajectoryExtractor",
    "ToraTransformer3D",
    "build_cogvideox",
    "build_cogvideox_vae",
    "find_layout",
    "load_official_tora",
    "load_pretrained",
    "read_official_tora",
]
