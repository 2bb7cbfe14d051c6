"""Attention layers of the OpenSora v1.2 STDiT3 backbone, on torch SDPA.

Names (``qkv``, ``q_norm``, ``k_norm``, ``proj``; ``q_linear``, ``kv_linear``)
and packing orders follow OpenSora v1.2's ``Attention`` and
``MultiHeadCrossAttention`` so its checkpoints load strictly.
"""

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from tora.models.layers.embeddings import apply_rotary_embedding


class RMSNorm(nn.Module):
    """Root-mean-square norm with a learned gain (LLaMA/T5 style), computed in float32."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * normed.to(x.dtype)


class SelfAttention(nn.Module):
    """Multi-head self-attention with optional per-head RMS q/k norm and rotary positions.

    ``qkv`` packs its output as (3, heads, head_dim); q/k are normalised before
    the rotation.
    """

    def __init__(self, dim: int, num_heads: int, qk_norm: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"hidden size {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.q_norm = RMSNorm(head_dim) if qk_norm else nn.Identity()
        self.k_norm = RMSNorm(head_dim) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, rotary_angles: torch.Tensor | None = None) -> torch.Tensor:
        """``x [B, N, C]``, ``rotary_angles [N, head_dim]`` or None -> ``[B, N, C]``."""
        q, k, v = rearrange(
            self.qkv(x), "b n (three h d) -> three b h n d", three=3, h=self.num_heads
        )
        q, k = self.q_norm(q), self.k_norm(k)
        if rotary_angles is not None:
            q = apply_rotary_embedding(q, rotary_angles)
            k = apply_rotary_embedding(k, rotary_angles)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(rearrange(out, "b h n d -> b n (h d)"))


class CrossAttention(nn.Module):
    """Multi-head attention from video tokens to caption tokens (no norm, no gate).

    ``kv_linear`` packs its output as (2, heads, head_dim). OpenSora packs all
    captions into one sequence with an xformers block-diagonal mask; here each
    sample attends to its own caption through an SDPA boolean mask instead,
    which gives the same result.
    """

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"hidden size {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.q_linear = nn.Linear(dim, dim)
        self.kv_linear = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(
        self, x: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``x [B, N, C]``, ``context [B, L, C]``, ``context_mask [B, L]`` bool (True = real
        token) or None -> ``[B, N, C]``. A sample with no real token gets zeros."""
        q = rearrange(self.q_linear(x), "b n (h d) -> b h n d", h=self.num_heads)
        k, v = rearrange(
            self.kv_linear(context), "b l (two h d) -> two b h l d", two=2, h=self.num_heads
        )
        attn_mask = None
        if context_mask is not None:
            has_tokens = context_mask.any(dim=-1)
            # An all-False row would make softmax NaN: let it attend anywhere, then zero it.
            attn_mask = (context_mask | ~has_tokens[:, None])[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        if context_mask is not None:
            out = out * has_tokens[:, None, None, None].to(out.dtype)
        return self.proj(rearrange(out, "b h n d -> b n (h d)"))
