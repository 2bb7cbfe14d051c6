"""The video VAEs a ``model.vae`` config may name, as one type.

Each has ``latent_channels``, ``spatial_factor``, ``temporal_factor``,
``latent_shape(T, H, W)``, ``encode_latents(video)`` and
``decode_latents(latents, num_frames)``: what the pipeline, the diffusion stages and
the VAE motion encoder use. A union rather than a Protocol: they are used as
``nn.Module`` too (frozen, moved, saved under ``vae.``).
"""

from __future__ import annotations

from typing import TypeAlias

from tora.models.cogvideox.vae import CogVideoXVAE
from tora.models.opensora_vae import OpenSoraVAE
from tora.models.vae import CausalVAE3D

VideoVAE: TypeAlias = CausalVAE3D | OpenSoraVAE | CogVideoXVAE
