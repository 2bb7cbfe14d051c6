"""Embedding layers of the OpenSora v1.2 STDiT3 backbone.

Module and parameter names follow OpenSora v1.2 (``opensora/models/layers/blocks.py``)
so that its checkpoints load strictly; the code is our own.
Sources: DiT (arXiv 2212.09748) for the timestep MLP, PixArt-alpha
(arXiv 2310.00426) for the caption projection and its learned null caption,
RoFormer (arXiv 2104.09864) for rotary position embeddings.
"""

import math

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from timm.layers import Mlp
from torch import nn

from tora.models.layers.activations import TanhGELU


def sinusoidal_embedding(
    values: torch.Tensor, dim: int, max_period: float = 10000.0
) -> torch.Tensor:
    """GLIDE/DiT frequency features of scalars: ``[N] -> [N, dim]`` float32, cosines first.

    Frequencies run geometrically from 1 down to ``1 / max_period``; an odd ``dim``
    gets one zero column appended.
    """
    half = dim // 2
    frequencies = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=values.device) / half
    )
    angles = values.float()[:, None] * frequencies[None]
    embedding = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)
    if dim % 2:
        embedding = F.pad(embedding, (0, 1))
    return embedding


class ScalarEmbedder(nn.Module):
    """One scalar per sample (diffusion timestep, fps) -> ``[B, hidden_size]``.

    Sinusoidal features of ``frequency_dim`` channels, then Linear-SiLU-Linear
    (``mlp.0`` and ``mlp.2`` in the state dict).
    """

    def __init__(self, hidden_size: int, frequency_dim: int = 256):
        super().__init__()
        self.frequency_dim = frequency_dim
        self.mlp = nn.Sequential(
            nn.Linear(frequency_dim, hidden_size),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size),
        )

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        """``values [B]`` -> ``[B, hidden_size]`` in the dtype of the MLP weights."""
        features = sinusoidal_embedding(values, self.frequency_dim)
        return self.mlp(features.to(next(self.mlp.parameters()).dtype))


class PatchEmbed3D(nn.Module):
    """Video latents to tokens with a strided ``Conv3d`` (``proj``).

    ``[B, C, T, H, W] -> [B, t*h*w, hidden]``, tokens ordered (t, h, w). Sizes not
    divisible by the patch are zero-padded at the end (the far side) first, so
    ``t = ceil(T / p_t)`` and so on.
    """

    def __init__(self, patch_size: tuple[int, int, int], in_channels: int, hidden_size: int):
        super().__init__()
        self.patch_size = tuple(patch_size)
        self.proj = nn.Conv3d(in_channels, hidden_size, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        padding = []
        for size, patch in zip(reversed(x.shape[2:]), reversed(self.patch_size)):
            padding += [0, -size % patch]
        x = self.proj(F.pad(x, padding))
        return rearrange(x, "b c t h w -> b (t h w) c")


class CaptionEmbedder(nn.Module):
    """Projects text-encoder features to the hidden size; owns the null caption.

    ``y_proj`` is a timm ``Mlp`` (fc1, tanh-GELU, fc2). ``y_embedding
    [max_length, caption_channels]`` is the null caption: a persistent buffer
    (saved, never trained) that replaces a dropped caption in training
    (classifier-free guidance) and is the unconditional input at sampling time.
    """

    y_embedding: torch.Tensor

    def __init__(
        self, caption_channels: int, hidden_size: int, dropout_prob: float, max_length: int
    ):
        super().__init__()
        self.dropout_prob = dropout_prob
        self.y_proj = Mlp(
            in_features=caption_channels,
            hidden_features=hidden_size,
            out_features=hidden_size,
            act_layer=TanhGELU,
            drop=0.0,
        )
        self.register_buffer(
            "y_embedding", torch.randn(max_length, caption_channels) / caption_channels**0.5
        )

    def null_caption(self, batch_size: int) -> torch.Tensor:
        """The unconditional caption features ``[B, 1, max_length, caption_channels]``."""
        return repeat(self.y_embedding, "l c -> b 1 l c", b=batch_size)

    def forward(self, caption: torch.Tensor) -> torch.Tensor:
        """``caption [B, 1, L, caption_channels] -> [B, 1, L, hidden]``.

        In training mode each sample's caption is swapped for the first ``L``
        null-caption tokens with probability ``dropout_prob``; the caller keeps
        the caption's padding mask, as OpenSora does.
        """
        if self.training and self.dropout_prob > 0:
            length = caption.shape[2]
            if length > self.y_embedding.shape[0]:
                raise ValueError(
                    f"caption of {length} tokens is longer than the null caption "
                    f"({self.y_embedding.shape[0]} tokens, model_max_length)"
                )
            dropped = torch.rand(caption.shape[0], device=caption.device) < self.dropout_prob
            null = self.y_embedding[:length].to(caption.dtype)
            caption = torch.where(dropped[:, None, None, None], null, caption)
        return self.y_proj(caption)


def sincos_2d_position_embedding(
    height: int,
    width: int,
    dim: int,
    scale: torch.Tensor,
    base_size: int,
) -> torch.Tensor:
    """2D sine-cosine embedding of a ``height x width`` token grid, one per sample.

    Returns ``[B, height*width, dim]`` float32, tokens ordered (h, w). Positions
    are ``index / scale * base_size / size`` along each axis (OpenSora v1.2's
    resolution-aware grid, ``scale [B]``); the first ``dim/2`` channels encode the
    column (x), the rest the row (y), each as ``[sin, cos]`` of ``dim/4``
    frequencies ``10000^(-2i/(dim/2))``.
    """
    if dim % 4:
        raise ValueError(f"2D sincos position embedding needs dim divisible by 4, got {dim}")
    device = scale.device
    frequencies = 1.0 / 10000 ** (
        torch.arange(0, dim // 2, 2, dtype=torch.float32, device=device) / (dim // 2)
    )
    rows = torch.arange(height, device=device) / scale[:, None] * (base_size / height)
    columns = torch.arange(width, device=device) / scale[:, None] * (base_size / width)

    def encode(positions: torch.Tensor) -> torch.Tensor:
        angles = positions[..., None] * frequencies
        return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)

    column_embedding = repeat(encode(columns), "b w c -> b h w c", h=height)
    row_embedding = repeat(encode(rows), "b h c -> b h w c", w=width)
    embedding = torch.cat([column_embedding, row_embedding], dim=-1)
    return rearrange(embedding, "b h w c -> b (h w) c")


class RotaryEmbedding(nn.Module):
    """Rotary position embedding over a sequence axis (RoFormer), as in
    ``rotary_embedding_torch.RotaryEmbedding(dim=head_dim)``.

    ``freqs [head_dim/2]`` (``10000^(-2i/head_dim)``) is stored as a parameter
    with gradients off, matching OpenSora's state dict (``rope.freqs``).
    Channels are rotated in adjacent pairs (0,1), (2,3), ...
    """

    def __init__(self, head_dim: int, theta: float = 10000.0):
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"rotary embedding needs an even head dim, got {head_dim}")
        frequencies = 1.0 / theta ** (torch.arange(0, head_dim, 2).float() / head_dim)
        self.freqs = nn.Parameter(frequencies, requires_grad=False)

    def angles(self, length: int) -> torch.Tensor:
        """Rotation angles ``[length, head_dim]`` float32 for positions ``0..length-1``."""
        positions = torch.arange(length, device=self.freqs.device, dtype=torch.float32)
        angles = positions[:, None] * self.freqs.float()[None]
        return repeat(angles, "n f -> n (f pair)", pair=2)


def apply_rotary_embedding(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Rotate ``x [..., N, head_dim]`` by ``angles [N, head_dim]`` (from ``RotaryEmbedding``)."""
    pairs = rearrange(x, "... (f pair) -> ... f pair", pair=2)
    first, second = pairs.unbind(dim=-1)
    rotated_half = rearrange(torch.stack([-second, first], dim=-1), "... f pair -> ... (f pair)")
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    return x * cos + rotated_half * sin
