"""Tora on CogVideoX: diffusers' transformer, unchanged, with the motion guidance injected by
a forward hook on each block's ``norm1``.

The release (``ToraTransformer3DModel``, ``sat/dit_video_concat.py``) fuses block ``i``'s
motion feature into the video tokens that ``norm1`` outputs (after the timestep
modulation), before self-attention; the text tokens, the gates and the residual stream
are untouched, so the block adds the gated attention of the fused tokens to the unfused
stream. The hook replaces exactly that output, so no diffusers code is copied.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from einops import rearrange
from torch import nn

from tora.models.cogvideox.backbone import CogVideoXBackbone
from tora.models.cogvideox.motion import CogVideoXMotionGuidance


class CogVideoXTora(nn.Module):
    """CogVideoX backbone + optional motion guidance, in this project's calling convention.

    Without motion features this is exactly diffusers' ``CogVideoXTransformer3DModel``.
    The features of the latest call stay set until the next one, so that activation
    checkpointing recomputes a block with the same fusion.
    """

    def __init__(
        self, backbone: CogVideoXBackbone, motion_guidance: CogVideoXMotionGuidance | None = None
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.motion_guidance = motion_guidance
        self.motion_features: list[torch.Tensor] | None = None
        if motion_guidance is not None:
            if len(motion_guidance.fusers) != backbone.depth:
                raise ValueError(
                    f"CogVideoXTora: {len(motion_guidance.fusers)} fusers for a backbone of "
                    f"{backbone.depth} blocks; one per block expected"
                )
            for index in range(backbone.depth):
                norm1 = backbone.get_submodule(f"transformer_blocks.{index}.norm1")
                norm1.register_forward_hook(partial(self.fuse_after_norm1, index))

    def fuse_after_norm1(
        self, index: int, module: nn.Module, inputs: Any, output: tuple[torch.Tensor, ...]
    ) -> tuple[torch.Tensor, ...] | None:
        """``norm1`` returns ``(video tokens [B, T*H*W, C], text tokens, gate, text gate)``;
        block ``index``'s fuser replaces the video tokens."""
        if self.motion_features is None or self.motion_guidance is None:
            return None
        video, *rest = output
        feature = self.motion_features[index]
        _, _, frames, height, width = feature.shape
        fused = self.motion_guidance.fuse(
            index, video, feature.to(video.dtype), frames, height, width
        )
        return (fused, *rest)

    def run_transformer(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        timestep: torch.Tensor | int,
        motion_features: list[torch.Tensor] | None = None,
        image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
        **backbone_kwargs: Any,
    ) -> torch.Tensor:
        """diffusers' layout: ``hidden_states [B, F, C, H, W]``, ``encoder_hidden_states
        [B, L, D]``, one motion feature per block -> ``[B, F, C_out, H, W]``. The RoPE is
        computed for the latent grid when not given."""
        if motion_features is not None and self.motion_guidance is None:
            raise ValueError(
                "CogVideoXTora: motion features given to a model without motion guidance"
            )
        if motion_features is not None and len(motion_features) != self.backbone.depth:
            raise ValueError(
                f"CogVideoXTora: {len(motion_features)} motion features, one per block "
                f"({self.backbone.depth}) expected"
            )
        _, frames, _, height, width = hidden_states.shape
        if image_rotary_emb is None:
            image_rotary_emb = self.backbone.rotary_embeddings(
                frames, height, width, hidden_states.device
            )
        self.motion_features = motion_features
        return self.backbone(
            hidden_states,
            encoder_hidden_states,
            timestep,
            image_rotary_emb=image_rotary_emb,
            return_dict=False,
            **backbone_kwargs,
        )[0]

    def forward(
        self,
        x: torch.Tensor,
        timestep: torch.Tensor,
        y: torch.Tensor,
        mask: torch.Tensor | None = None,
        motion_latents: torch.Tensor | None = None,
        motion_features: list[torch.Tensor] | None = None,
        image_latents: torch.Tensor | None = None,
        fps: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``x [B, C, T, h, w]`` latents, ``timestep [B]`` (0 .. 999), caption ``y [B, 1, L, D]``
        -> v prediction ``[B, C, T, h, w]`` in ``x``'s dtype.

        ``motion_latents [B, Cm, T, h, w]`` or their ``motion_features`` (extracted once per
        sampling run); ``image_latents [B, C, T, h, w]`` for CogVideoX-I2V (concatenated on
        channels). ``mask`` and ``fps`` are accepted and unused: CogVideoX attends to every
        text token, padding included, as it was trained, and has no fps input.
        """
        dtype = self.backbone.dtype
        if motion_latents is not None and self.motion_guidance is not None:
            motion_features = self.motion_guidance.extract(motion_latents.to(dtype))
        hidden_states = x if image_latents is None else torch.cat([x, image_latents], dim=1)
        hidden_states = rearrange(hidden_states, "b c t h w -> b t c h w").to(dtype)
        captions = y.squeeze(1) if y.ndim == 4 else y
        out = self.run_transformer(hidden_states, captions.to(dtype), timestep, motion_features)
        return rearrange(out, "b t c h w -> b c t h w").to(x.dtype)


class ToraTransformer3D(nn.Module):
    """A drop-in for the release's ``ToraTransformer3DModel``: its keyword arguments
    (``hidden_states [B, F, C, H, W]``, ``encoder_hidden_states``, ``timestep``,
    ``video_flow [B, F, 16, h, w]``, ``image_rotary_emb``, ...) and its output
    (``Transformer2DModelOutput``, or a 1-tuple with ``return_dict=False``, holding the
    prediction ``[B, F, C_out, H, W]``). ``video_flow=None`` runs CogVideoX alone."""

    def __init__(self, tora: CogVideoXTora) -> None:
        super().__init__()
        self.tora = tora

    @property
    def config(self) -> Any:
        """The backbone's diffusers config (the release's pipelines read it)."""
        return self.tora.backbone.config

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        timestep: torch.Tensor | int,
        video_flow: torch.Tensor | None = None,
        timestep_cond: torch.Tensor | None = None,
        ofs: torch.Tensor | None = None,
        image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
        attention_kwargs: dict[str, Any] | None = None,
        return_dict: bool = True,
    ) -> Transformer2DModelOutput | tuple[torch.Tensor]:
        features = None
        if video_flow is not None:
            if self.tora.motion_guidance is None:
                raise ValueError(
                    "ToraTransformer3D: video_flow given to a model without motion guidance"
                )
            flow = rearrange(video_flow, "b f c h w -> b c f h w").to(hidden_states.dtype)
            features = self.tora.motion_guidance.extract(flow)
        sample = self.tora.run_transformer(
            hidden_states,
            encoder_hidden_states,
            timestep,
            features,
            image_rotary_emb,
            timestep_cond=timestep_cond,
            ofs=ofs,
            attention_kwargs=attention_kwargs,
        )
        return Transformer2DModelOutput(sample=sample) if return_dict else (sample,)
