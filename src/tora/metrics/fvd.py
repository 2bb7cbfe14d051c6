"""FVD: the Fréchet distance between I3D feature statistics of real and generated videos.

The feature model is the Kinetics-400 I3D as TorchScript (``i3d_torchscript.pt``,
the file StyleGAN-V and the common FVD ports load), read from a local path and
called as ``model(videos [B, 3, 16, 224, 224] in [-1, 1], rescale=False,
resize=False, return_features=True) -> [B, 400]``. Preprocessing follows those
ports: 16 frames, the short side bilinearly resized to 224, a centre crop to
224 x 224. Covariances are unbiased (``np.cov``), as in StyleGAN-V.

The matrix square root needs no scipy: ``tr sqrt(S1 S2) = tr sqrt(S1^1/2 S2 S1^1/2)``,
and both square roots are of symmetric PSD matrices, so two float64
eigendecompositions do it, with rounding-noise eigenvalues (tiny, maybe negative) set to 0.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from tora.metrics.base import MetricUnavailable, VideoLike, as_video_batch

ArrayLike = np.ndarray | torch.Tensor


def _psd_eigendecomposition(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigendecomposition of a symmetric PSD matrix (its symmetric part, float64).

    Eigenvalues below the rank tolerance ``D * eps * max|eigenvalue|`` (numpy's
    ``matrix_rank``) are rounding noise, negative or not, and become 0: a
    rank-deficient covariance (fewer videos than feature dimensions) then gives
    an exact 0 distance to itself instead of the sum of D square roots of noise.
    """
    eigenvalues, eigenvectors = torch.linalg.eigh((matrix + matrix.T) / 2)
    tolerance = len(eigenvalues) * torch.finfo(eigenvalues.dtype).eps * eigenvalues.abs().max()
    return torch.where(eigenvalues > tolerance, eigenvalues, 0.0), eigenvectors


def frechet_distance(mu1: ArrayLike, sigma1: ArrayLike, mu2: ArrayLike, sigma2: ArrayLike) -> float:
    """Fréchet distance between Gaussians N(mu1, sigma1) and N(mu2, sigma2):
    ``||mu1 - mu2||^2 + tr(sigma1) + tr(sigma2) - 2 tr sqrt(sigma1 sigma2)``, in float64.

    Args: means ``[D]``, covariances ``[D, D]`` (symmetric PSD).
    """
    mu1, sigma1, mu2, sigma2 = (
        torch.as_tensor(value).detach().cpu().to(torch.float64)
        for value in (mu1, sigma1, mu2, sigma2)
    )
    if (
        mu1.ndim != 1
        or mu2.shape != mu1.shape
        or sigma1.shape != (len(mu1), len(mu1))
        or sigma2.shape != sigma1.shape
    ):
        raise ValueError(
            "frechet_distance: means [D] and covariances [D, D] expected, got "
            f"mu1 {list(mu1.shape)}, sigma1 {list(sigma1.shape)}, "
            f"mu2 {list(mu2.shape)}, sigma2 {list(sigma2.shape)}"
        )
    eigenvalues, eigenvectors = _psd_eigendecomposition(sigma1)
    sqrt_sigma1 = eigenvectors @ torch.diag(eigenvalues.sqrt()) @ eigenvectors.T
    middle, _ = _psd_eigendecomposition(sqrt_sigma1 @ sigma2 @ sqrt_sigma1)
    trace_sqrt = middle.sqrt().sum()
    distance = (mu1 - mu2).square().sum() + sigma1.trace() + sigma2.trace() - 2 * trace_sqrt
    return float(distance)


class FeatureStatistics:
    """Streaming mean and unbiased covariance of feature rows, in float64.

    Batches are merged with Chan et al.'s pairwise update, which keeps the
    covariance accurate when the features' mean is large next to their spread.
    """

    def __init__(self) -> None:
        self.count = 0
        self._mean: torch.Tensor | None = None
        self._scatter: torch.Tensor | None = None  # sum of (x - mean)(x - mean)^T

    def update(self, features: ArrayLike) -> FeatureStatistics:
        """Add ``features [B, D]``; returns self."""
        features = torch.as_tensor(features).detach().cpu().to(torch.float64)
        if features.ndim != 2 or (self._mean is not None and features.shape[1] != len(self._mean)):
            expected = "D" if self._mean is None else str(len(self._mean))
            raise ValueError(f"features: [B, {expected}] expected, got {list(features.shape)}")
        if len(features) == 0:
            return self
        batch_mean = features.mean(dim=0)
        centred = features - batch_mean
        batch_scatter = centred.T @ centred
        if self._mean is None or self._scatter is None:
            self.count, self._mean, self._scatter = len(features), batch_mean, batch_scatter
            return self
        total = self.count + len(features)
        delta = batch_mean - self._mean
        self._mean = self._mean + delta * len(features) / total
        self._scatter = (
            self._scatter
            + batch_scatter
            + torch.outer(delta, delta) * self.count * len(features) / total
        )
        self.count = total
        return self

    @property
    def mean(self) -> torch.Tensor:
        """``[D]`` float64."""
        if self._mean is None:
            raise ValueError("FeatureStatistics: no features added yet")
        return self._mean

    @property
    def covariance(self) -> torch.Tensor:
        """``[D, D]`` float64, unbiased (divided by count - 1)."""
        if self.count < 2 or self._scatter is None:
            raise ValueError(
                f"FeatureStatistics: a covariance needs at least 2 feature rows, got {self.count}"
            )
        return self._scatter / (self.count - 1)


class I3DFeatureExtractor:
    """The Kinetics-400 I3D TorchScript and its preprocessing.

    Args:
        path: ``i3d_torchscript.pt``.
        device: where the model runs.
        num_frames: frames per clip fed to I3D (16 for FVD).
        frame_sampling: ``"first"``, the first ``num_frames`` frames (the usual
            FVD protocol; shorter videos are an error), or ``"uniform"``, frames at
            ``round(linspace(0, T - 1, num_frames))`` (repeats frames of shorter videos).
        resolution: side of the square I3D input.
    """

    def __init__(
        self,
        path: str | Path,
        device: str | torch.device = "cpu",
        num_frames: int = 16,
        frame_sampling: str = "first",
        resolution: int = 224,
    ):
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"I3DFeatureExtractor: no TorchScript file at {path}; expected the Kinetics-400 I3D "
                "i3d_torchscript.pt used by StyleGAN-V / VideoGPT FVD"
            )
        if frame_sampling not in ("first", "uniform"):
            raise ValueError(
                f"I3DFeatureExtractor: frame_sampling 'first' or 'uniform' expected, got {frame_sampling!r}"
            )
        self.device = torch.device(device)
        self.model = torch.jit.load(str(path), map_location=self.device).eval()
        self.num_frames = num_frames
        self.frame_sampling = frame_sampling
        self.resolution = resolution

    def preprocess(self, videos: VideoLike) -> torch.Tensor:
        """Videos (any accepted layout) -> ``[B, 3, num_frames, resolution, resolution]`` in [-1, 1]."""
        videos = as_video_batch(videos).to(self.device)
        num_frames, height, width = videos.shape[2:]
        if self.frame_sampling == "first":
            if num_frames < self.num_frames:
                raise ValueError(
                    f"I3DFeatureExtractor: videos of at least {self.num_frames} frames expected "
                    f"with frame_sampling='first', got {num_frames}"
                )
            index = torch.arange(self.num_frames)
        else:
            index = torch.linspace(0, num_frames - 1, self.num_frames).round().long()
        frames = videos[:, :, index.to(self.device)]
        short = min(height, width)  # resized to `resolution`, the long side in proportion (ceil)
        size = (-(-height * self.resolution // short), -(-width * self.resolution // short))
        batch = frames.shape[0]
        frames = F.interpolate(
            frames.flatten(0, 1), size=size, mode="bilinear", align_corners=False
        ).unflatten(0, (batch, 3))
        top, left = (size[0] - self.resolution) // 2, (size[1] - self.resolution) // 2
        frames = frames[..., top : top + self.resolution, left : left + self.resolution]
        return frames.contiguous()

    @torch.no_grad()
    def features(self, preprocessed: torch.Tensor) -> torch.Tensor:
        """``[B, 3, num_frames, resolution, resolution]`` -> ``[B, 400]`` (pre-softmax features)."""
        return self.model(
            preprocessed.to(self.device), rescale=False, resize=False, return_features=True
        )

    def __call__(self, videos: VideoLike) -> torch.Tensor:
        return self.features(self.preprocess(videos))


VideoSet = VideoLike | Iterable[VideoLike]
"""A batch, or an iterable of videos / batches (e.g. a generator over files)."""


class FrechetVideoDistance:
    """FVD between two sets of videos.

    Args:
        extractor: the I3D features.
        batch_size: videos per I3D call.
    """

    available = True

    def __init__(self, extractor: I3DFeatureExtractor, batch_size: int = 16):
        self.extractor = extractor
        self.batch_size = batch_size

    def _preprocessed_batches(self, videos: VideoSet) -> Iterator[torch.Tensor]:
        """Regroup any accepted input into preprocessed batches of ``batch_size``."""
        items = [videos] if isinstance(videos, np.ndarray | torch.Tensor) else videos
        pending: list[torch.Tensor] = []
        for item in items:
            pending.extend(self.extractor.preprocess(item).split(1))
            while len(pending) >= self.batch_size:
                yield torch.cat(pending[: self.batch_size])
                pending = pending[self.batch_size :]
        if pending:
            yield torch.cat(pending)

    def statistics(self, videos: VideoSet) -> FeatureStatistics:
        """I3D feature statistics of a set (e.g. the real set, computed once and reused)."""
        statistics = FeatureStatistics()
        for batch in self._preprocessed_batches(videos):
            statistics.update(self.extractor.features(batch))
        return statistics

    def __call__(self, real_videos: VideoSet | FeatureStatistics, fake_videos: VideoSet) -> float:
        real = (
            real_videos
            if isinstance(real_videos, FeatureStatistics)
            else self.statistics(real_videos)
        )
        fake = self.statistics(fake_videos)
        return frechet_distance(real.mean, real.covariance, fake.mean, fake.covariance)


def fvd(
    real_videos: VideoSet | FeatureStatistics,
    fake_videos: VideoSet,
    extractor: I3DFeatureExtractor,
    batch_size: int = 16,
) -> float:
    """FVD of ``fake_videos`` against ``real_videos`` (videos, or precomputed statistics)."""
    return FrechetVideoDistance(extractor, batch_size)(real_videos, fake_videos)


def build_fvd(
    i3d_path: str | Path | None, batch_size: int = 16, **extractor_kwargs
) -> FrechetVideoDistance | MetricUnavailable:
    """The FVD metric, or :class:`MetricUnavailable` when no I3D file is configured.

    A configured path that does not exist is an error, not "unavailable".
    """
    if i3d_path is None:
        return MetricUnavailable("fvd", "no I3D TorchScript configured: set metrics.i3d_path")
    return FrechetVideoDistance(I3DFeatureExtractor(i3d_path, **extractor_kwargs), batch_size)
