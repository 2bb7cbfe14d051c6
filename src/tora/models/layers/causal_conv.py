"""Causal 3D convolution (MAGVIT-v2, arXiv 2310.05737, section 3.1).

Time is padded on the past side only, so output frame ``i`` sees input frames
``<= i`` (``<= i * stride`` for a time-strided conv). The clip's first frame is
replicated as its own past. A ``TimeCache`` carries the unused tail of each
conv's time-padded input from one temporal chunk to the next, which makes
chunk-by-chunk processing equal to processing the whole clip at once.
"""

import torch
from einops import repeat
from torch import nn

from tora.models.layers.conv import Conv3d

TimeCache = dict[nn.Module, torch.Tensor]
"""Per-conv time context between chunks: conv -> input frames ``[B, C, t, H, W]``
its next chunk starts with. Start each clip with a fresh empty dict."""


class CausalConv3d(Conv3d):
    """``nn.Conv3d`` on ``[B, C, T, H, W]``, causal in time, zero-padded ("same") in space.

    Output length is ``(T - 1) // stride_t + 1``: with time stride 2, output
    ``j`` covers input frames ``2j - k_t + 1 .. 2j``, so frame 0 is encoded alone.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int, int] = 3,
        stride: int | tuple[int, int, int] = 1,
    ):
        if isinstance(kernel_size, int):
            kernel_size = (kernel_size, kernel_size, kernel_size)
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=(0, kernel_size[1] // 2, kernel_size[2] // 2),
        )

    def forward(self, x: torch.Tensor, cache: TimeCache | None = None) -> torch.Tensor:
        kernel_t, stride_t = self.kernel_size[0], self.stride[0]
        past = cache.get(self) if cache is not None else None
        if past is None:
            past = repeat(x[:, :, :1], "b c 1 h w -> b c t h w", t=kernel_t - 1)
        x = torch.cat([past, x], dim=2)
        if cache is not None:
            num_outputs = (x.shape[2] - kernel_t) // stride_t + 1
            cache[self] = x[:, :, num_outputs * stride_t :].clone()
        return super().forward(x)
