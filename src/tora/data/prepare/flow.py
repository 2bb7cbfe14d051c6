"""Optical flow between consecutive frames of a clip.

:class:`FlowEstimator` is the interface: ``estimate(frames uint8 [T, H, W, 3] RGB)
-> float32 [T-1, H, W, 2]``, forward flow in pixels (``flow[t]`` at pixel p of
frame t points to p in frame t+1), the convention of the shard schema. Two
estimators ship: OpenCV's DIS (CPU, default) and torchvision's RAFT loaded from a
local weights file (nothing is downloaded).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange

DIS_PRESETS = {
    "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
    "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
    "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
}
RAFT_MODELS = ("small", "large")
RAFT_MIN_SIZE = 128
"""Smallest input side RAFT's 4-level correlation pyramid accepts (8 x 16 pixels)."""


class FlowEstimator(ABC):
    @abstractmethod
    def estimate(self, frames: np.ndarray) -> np.ndarray:
        """uint8 ``[T, H, W, 3]`` RGB -> float32 ``[T-1, H, W, 2]`` forward flow in pixels."""


class DISFlowEstimator(FlowEstimator):
    """OpenCV Dense Inverse Search on grayscale frames (Kroeger et al., ECCV 2016)."""

    def __init__(self, preset: str = "medium"):
        if preset not in DIS_PRESETS:
            raise ValueError(
                f"flow.dis_preset: one of {list(DIS_PRESETS)} expected, got {preset!r}"
            )
        self.dis = cv2.DISOpticalFlow.create(DIS_PRESETS[preset])

    def estimate(self, frames: np.ndarray) -> np.ndarray:
        gray = [cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2GRAY) for frame in frames]
        flows = [self.dis.calc(first, second, None) for first, second in zip(gray, gray[1:])]  # type: ignore[call-overload]  # OpenCV allocates the flow for None; its stubs require a Mat
        return np.stack(flows).astype(np.float32, copy=False)


class RAFTFlowEstimator(FlowEstimator):
    """torchvision's RAFT (Teed & Deng, ECCV 2020) with weights from a local file,
    e.g. torchvision's ``raft_large_C_T_SKHT_V2-ff5fadd5.pth`` downloaded once by hand."""

    def __init__(
        self,
        weights: str | None,
        model: str = "small",
        iterations: int = 12,
        device: str = "cpu",
        batch_size: int = 8,
    ):
        # Imported here: torchvision.models takes seconds to import, and only RAFT needs it.
        from torchvision.models.optical_flow import raft_large, raft_small

        if model not in RAFT_MODELS:
            raise ValueError(f"flow.raft_model: one of {list(RAFT_MODELS)} expected, got {model!r}")
        if not weights:
            raise ValueError(
                "flow.raft_weights: path to a local RAFT state dict (.pth, e.g. torchvision's "
                f"raft_{model} weights) expected with flow.method=raft, got null"
            )
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"flow.raft_weights: {path} does not exist (RAFT {model})")
        network = (raft_small if model == "small" else raft_large)(weights=None, progress=False)
        state = torch.load(path, map_location="cpu", weights_only=True)
        try:
            network.load_state_dict(state)
        except RuntimeError as error:
            raise ValueError(
                f"flow.raft_weights: {path} is not a RAFT {model} state dict "
                f"(flow.raft_model={model}): {error}"
            ) from error
        self.network = network.eval().to(device)
        self.iterations = iterations
        self.device = torch.device(device)
        self.batch_size = batch_size

    @torch.inference_mode()
    def estimate(self, frames: np.ndarray) -> np.ndarray:
        images = rearrange(torch.from_numpy(np.ascontiguousarray(frames)), "t h w c -> t c h w")
        images = images.to(self.device).float() / 127.5 - 1.0
        height, width = images.shape[-2:]
        # RAFT's correlation pyramid needs 1/8-resolution features of at least
        # 16 pixels: smaller clips are upsampled, and their flow scaled back.
        upscale = max(1.0, RAFT_MIN_SIZE / min(height, width))
        if upscale > 1.0:
            size = (math.ceil(height * upscale), math.ceil(width * upscale))
            images = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
        scaled_height, scaled_width = images.shape[-2:]
        images = F.pad(images, (0, -scaled_width % 8, 0, -scaled_height % 8), mode="replicate")
        flows = []
        for start in range(0, len(images) - 1, self.batch_size):
            stop = min(start + self.batch_size, len(images) - 1)
            predictions = self.network(
                images[start:stop], images[start + 1 : stop + 1], num_flow_updates=self.iterations
            )
            flows.append(predictions[-1][..., :scaled_height, :scaled_width])
        flow = torch.cat(flows)
        if upscale > 1.0:
            factors = torch.tensor(
                [width / scaled_width, height / scaled_height], device=flow.device
            )
            flow = F.interpolate(flow, size=(height, width), mode="bilinear", antialias=True)
            flow = flow * rearrange(factors, "xy -> 1 xy 1 1")
        return rearrange(flow, "t xy h w -> t h w xy").float().cpu().numpy()


def build_flow_estimator(
    method: str,
    dis_preset: str,
    raft_model: str,
    raft_weights: str | None,
    raft_iterations: int,
    device: str,
    batch_size: int,
) -> FlowEstimator:
    """The estimator the ``flow`` config names (``method``: ``dis`` or ``raft``)."""
    if method == "dis":
        return DISFlowEstimator(dis_preset)
    if method == "raft":
        return RAFTFlowEstimator(raft_weights, raft_model, raft_iterations, device, batch_size)
    raise ValueError(f"flow.method: 'dis' or 'raft' expected, got {method!r}")
