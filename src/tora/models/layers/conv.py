"""``nn.Conv3d`` whose CPU float32 result does not depend on the batch size.

PyTorch's CPU dispatch picks between oneDNN and its reference kernels by batch size,
input size and thread count: a small float32 input with batch 1 (N * C * T * H <= 20480)
goes to ``slow_conv3d``, about 11x slower per clip at one thread, and so does a 1x1x1 conv
at batch 1 (but not at batch 2) when more than one thread runs; the kernels differ in the
last bits. So a clip encoded alone (a latent-cache miss beside a hit, one sample at
inference) would get another latent than in a batch. Routing CPU float32 through oneDNN
always keeps every batch row equal to the clip alone (docs/findings.md).
"""

import torch
from torch import nn


class Conv3d(nn.Conv3d):
    """``nn.Conv3d`` (same parameters, same state-dict names) that always runs oneDNN
    for CPU float32 with zero padding; elsewhere exactly ``nn.Conv3d``."""

    def _conv_forward(
        self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        if (
            input.device.type == "cpu"
            and input.dtype == weight.dtype == torch.float32
            and self.padding_mode == "zeros"
            and isinstance(self.padding, tuple)  # not "same"/"valid"
            and torch.backends.mkldnn.is_available()
            and torch.backends.mkldnn.enabled
        ):
            return torch.mkldnn_convolution(
                input, weight, bias, self.padding, self.stride, self.dilation, self.groups
            )
        return super()._conv_forward(input, weight, bias)
