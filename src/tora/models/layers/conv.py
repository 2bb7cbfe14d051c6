"""``nn.Conv3d`` whose CPU float32 result does not depend on the batch size.

For a small float32 input with batch 1 (N * C * T * H <= 20480) PyTorch's CPU dispatch
picks its reference ``slow_conv3d`` kernel instead of oneDNN: about 11x slower per clip
at one thread, and different in the last bits from what the same clip gives inside a
batch of two. So a clip encoded alone (a latent-cache miss beside a hit, one sample at
inference) would get another latent than in a batch. Routing CPU float32 through
oneDNN always keeps every batch row equal to the clip alone (docs/findings.md).
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
