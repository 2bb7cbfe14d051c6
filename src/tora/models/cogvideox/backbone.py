"""The CogVideoX backbone: diffusers' ``CogVideoXTransformer3DModel``, unchanged, plus the few
read-only facts the rest of this package asks a backbone (sizes, the rotary embedding of a
latent grid). Its state dict is diffusers' own, so a CogVideoX ``transformer/`` folder
loads into it strictly."""

from __future__ import annotations

import re
from typing import Any

import torch
from diffusers.models.embeddings import get_3d_rotary_pos_embed
from diffusers.models.transformers.cogvideox_transformer_3d import CogVideoXTransformer3DModel
from diffusers.pipelines.cogvideo.pipeline_cogvideox import get_resize_crop_region_for_grid
from torch import nn


class CogVideoXBackbone(CogVideoXTransformer3DModel):
    """``CogVideoXTransformer3DModel`` with the backbone facts ``tora`` reads.

    ``forward`` is diffusers' (``hidden_states [B, F, C, H, W]``). CogVideoX-I2V takes
    ``in_channels = 2 * latent_channels`` (noisy latents and image latents concatenated).
    """

    @property
    def in_channels(self) -> int:
        return int(self.config["in_channels"])

    @property
    def latent_channels(self) -> int:
        """Channels of the latents it denoises (the VAE's)."""
        return int(self.config["out_channels"])

    @property
    def hidden_size(self) -> int:
        return int(self.config["num_attention_heads"] * self.config["attention_head_dim"])

    @property
    def depth(self) -> int:
        return int(self.config["num_layers"])

    @property
    def patch_size(self) -> tuple[int, int, int]:
        """``(pt, ph, pw)``: CogVideoX 1.0 patchifies 2 x 2 per latent frame."""
        p = int(self.config["patch_size"])
        return (int(self.config["patch_size_t"] or 1), p, p)

    @property
    def adaln_modulations(self) -> nn.ModuleList:
        """Every block's timestep modulation (``norm1.linear``, ``norm2.linear``): the SAT
        ``adaLN_modulations``, trainable with ``model.trainable=tora_modules_adaln``."""
        return nn.ModuleList(
            module
            for name, module in self.named_modules()
            if re.fullmatch(r"transformer_blocks\.\d+\.norm[12]\.linear", name)
        )

    def rotary_embeddings(
        self, frames: int, height: int, width: int, device: torch.device | None = None
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The 3D RoPE ``(cos, sin)`` for ``frames x height x width`` latents as diffusers'
        CogVideoX pipeline computes it (grid resized into the ``sample_height x
        sample_width`` base grid); None for a backbone without RoPE (CogVideoX-2B)."""
        if not self.config["use_rotary_positional_embeddings"]:
            return None
        if self.config["patch_size_t"] is not None:
            raise NotImplementedError("CogVideoX 1.5 (patch_size_t) RoPE is not supported")
        p = int(self.config["patch_size"])
        grid = (height // p, width // p)
        crops = get_resize_crop_region_for_grid(
            grid, self.config["sample_width"] // p, self.config["sample_height"] // p
        )
        cos, sin = get_3d_rotary_pos_embed(
            embed_dim=self.config["attention_head_dim"],
            crops_coords=crops,
            grid_size=grid,
            temporal_size=frames,
            device=device,
        )
        return cos, sin


def build_cogvideox(gradient_checkpointing: bool = False, **config: Any) -> CogVideoXBackbone:
    """A backbone from the arguments of ``CogVideoXTransformer3DModel`` (a ``config.json``
    of a CogVideoX ``transformer/`` folder, without its ``_``-keys)."""
    backbone = CogVideoXBackbone(**config)
    if gradient_checkpointing:
        backbone.enable_gradient_checkpointing()
    return backbone
