"""The CogVideoX video VAE: diffusers' ``AutoencoderKLCogVideoX`` with the VAE interface the
pipeline and the training stages use (``latent_channels``, ``latent_shape``,
``encode_latents``, ``decode_latents``).

Latents are ``posterior sample * scaling_factor`` (0.7 for CogVideoX-5B), as the release
encodes both the videos it trains on and the flow-RGB of the trajectories.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from diffusers.models.autoencoders.autoencoder_kl_cogvideox import AutoencoderKLCogVideoX

from tora.checkpoints import load_weights_from


class CogVideoXVAE(AutoencoderKLCogVideoX):
    """``AutoencoderKLCogVideoX`` (same state dict) plus the project's VAE interface.

    ``sample_posterior``: latents are a posterior sample (the release) or its mean.
    """

    sample_posterior: bool = True

    @property
    def latent_channels(self) -> int:
        return int(self.config["latent_channels"])

    @property
    def spatial_factor(self) -> int:
        return 2 ** (len(self.config["block_out_channels"]) - 1)

    @property
    def temporal_factor(self) -> int:
        return int(self.config["temporal_compression_ratio"])

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int]:
        """``(T', h, w)`` of a ``num_frames x height x width`` clip. The decoder turns latent
        frames back in pairs after the first, so a clip has ``2 * temporal_factor * k + 1``
        frames (CogVideoX: 8k + 1, e.g. 49 -> 13 latent frames)."""
        frame_step = 2 * self.temporal_factor
        if (
            (num_frames - 1) % frame_step
            or height % self.spatial_factor
            or width % self.spatial_factor
        ):
            raise ValueError(
                f"CogVideoX VAE: a {num_frames} x {height} x {width} clip; {frame_step}k + 1 frames "
                f"(e.g. 49) and height, width divisible by {self.spatial_factor} expected"
            )
        return (
            (num_frames - 1) // self.temporal_factor + 1,
            height // self.spatial_factor,
            width // self.spatial_factor,
        )

    def encode_latents(
        self, video: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """``video [B, 3, T, H, W]`` in [-1, 1] -> scaled latents ``[B, C, T', h, w]``."""
        expected = self.latent_shape(*video.shape[2:])
        posterior = self.encode(video.to(self.dtype)).latent_dist
        latents = posterior.sample(generator) if self.sample_posterior else posterior.mode()
        if tuple(latents.shape[2:]) != expected:
            # diffusers' tiles and overlaps are tuned for 480 x 720 and miscount elsewhere.
            raise ValueError(
                f"CogVideoX VAE: a {tuple(video.shape[2:])} clip encoded to "
                f"{tuple(latents.shape[2:])} latents, {expected} expected; tiling "
                f"({self.use_tiling}) only suits CogVideoX's 480 x 720 (model.vae.tiling=false)"
            )
        return latents * self.config["scaling_factor"]

    def decode_latents(self, latents: torch.Tensor, num_frames: int | None = None) -> torch.Tensor:
        """Scaled latents ``[B, C, T', h, w]`` -> video ``[B, 3, T, H, W]`` (float32, about [-1, 1]);
        ``num_frames``, when given, is checked against what the latents decode to."""
        latents = latents.to(self.dtype) / self.config["scaling_factor"]
        video = self.decode(latents).sample.float()
        if num_frames is not None and video.shape[2] != num_frames:
            raise ValueError(
                f"{latents.shape[2]} latent frames decode to {video.shape[2]} frames, not {num_frames}"
            )
        return video


def build_cogvideox_vae(
    path: str | Path | None = None,
    sample_posterior: bool = True,
    slicing: bool = False,
    tiling: bool = False,
    **architecture: Any,
) -> CogVideoXVAE:
    """A :class:`CogVideoXVAE` from ``AutoencoderKLCogVideoX`` arguments, or from the
    ``vae/`` folder of a CogVideoX (or released Tora) diffusers download at ``path``
    (its ``config.json``, which ``architecture`` may override, and its weights, loaded
    strictly). ``slicing`` / ``tiling``: encode and decode a batch one video at a time /
    in overlapping spatial tiles (less memory, as diffusers' switches)."""
    if path is not None:
        config_file = Path(path) / "config.json"
        if not config_file.is_file():
            raise FileNotFoundError(
                f"CogVideoX VAE: {config_file} not found; model.vae.path must be the vae/ folder "
                "of a CogVideoX or Tora diffusers download"
            )
        stored = json.loads(config_file.read_text())
        architecture = {k: v for k, v in stored.items() if not k.startswith("_")} | architecture
    vae = CogVideoXVAE(**architecture)
    if path is not None:
        load_weights_from(vae, path)
    vae.sample_posterior = sample_posterior
    if slicing:
        vae.enable_slicing()
    if tiling:
        vae.enable_tiling()
    return vae
