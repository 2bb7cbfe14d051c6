"""LightningModule for the causal 3D VAE: the video VAE on RGB clips and the
motion VAE on flow-RGB maps (initialised from the video VAE, as in the paper)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities.types import OptimizerConfig, OptimizerLRSchedulerConfig
from torchmetrics.functional.image import structural_similarity_index_measure

from tora.models.build import build_vae
from tora.models.opensora_vae import OpenSoraVAE
from tora.models.vae import CausalVAE3D
from tora.motion import MotionRGBConfig
from tora.training.logging import log_parameter_counts, log_video_grid
from tora.training.motion_input import MotionSourceConfig, motion_condition
from tora.training.optim import build_optimizers

log = logging.getLogger(__name__)

INPUTS = ("video", "motion")


def psnr(reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """PSNR in dB for tensors in [-1, 1] (peak-to-peak 2)."""
    mse = F.mse_loss(reconstruction.clamp(-1, 1), target)
    return 10 * torch.log10(4.0 / mse.clamp_min(1e-10))


class VAEModule(L.LightningModule):
    """Trains :class:`CausalVAE3D` with an L1 reconstruction loss plus a KL term.

    ``input``: ``video`` (RGB clips) or ``motion`` (flow-RGB built from the clip's
    flow and tracks by :func:`motion_condition`, the exact condition the
    diffusion stages feed the motion VAE).
    """

    def __init__(
        self,
        net: CausalVAE3D | OpenSoraVAE,
        vae: dict[str, Any],
        optimizer: dict[str, Any],
        scheduler: dict[str, Any] | None = None,
        input: str = "video",
        kl_weight: float = 1e-6,
        motion_source: dict[str, Any] | None = None,
        motion_rgb: dict[str, Any] | None = None,
        train_crop: list[int] | None = None,
        latent_statistics_batches: int = 8,
        log_videos_every_n_val: int = 1,
        compile: bool = False,
    ) -> None:
        super().__init__()
        if input not in INPUTS:
            raise ValueError(f"VAE input {input!r}: one of {INPUTS} expected")
        self.save_hyperparameters(ignore=["net"])
        self.vae = net
        self.motion_source = MotionSourceConfig(**(motion_source or {}))
        self.motion_rgb = MotionRGBConfig(**(motion_rgb or {}))
        if compile:
            self.vae.compile()
        # The global step the latent statistics were last fitted at (None: never), and
        # the first training clips (whole, uncropped), which they are fitted on.
        self.statistics_step: int | None = None
        self.statistics_clips: list[torch.Tensor] = []

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> VAEModule:
        """Build the VAE from ``config["vae"]`` (from ``init_checkpoint``'s weights when
        given: the motion VAE starts from the video VAE), then the module around it."""
        config = {k: v for k, v in config.items() if k != "_target_"}
        init_checkpoint = config.pop("init_checkpoint", None)
        net = build_vae(config["vae"], init_checkpoint, require_statistics=False)
        if not isinstance(net, CausalVAE3D | OpenSoraVAE):
            raise ValueError(
                f"model.vae: a CausalVAE3D or OpenSoraVAE expected (the VAEs this stage trains), "
                f"got {type(net).__name__}"
            )
        return cls(net=net, **config)

    def check_clip_size(self, num_frames: int, resolution: Sequence[int]) -> None:
        """Fail before training on clips the VAE cannot take, naming the keys."""
        try:
            self.vae.latent_shape(num_frames, *resolution)
        except ValueError as error:
            raise ValueError(
                f"data.num_frames={num_frames} / data.resolution={list(resolution)} do not fit "
                f"the VAE: {error}"
            ) from None

    def target(self, batch: dict[str, Any]) -> torch.Tensor:
        """The clip the VAE reconstructs, ``[B, 3, T, H, W]`` in [-1, 1]."""
        if self.hparams["input"] == "video":
            return batch["video"]
        return motion_condition(batch, self.motion_source, self.motion_rgb)["motion_rgb"]

    def configure_optimizers(self) -> OptimizerConfig | OptimizerLRSchedulerConfig:
        return build_optimizers(self, self.hparams["optimizer"], self.hparams["scheduler"])

    def random_crop(self, clips: torch.Tensor) -> torch.Tensor:
        """A random ``train_crop = [T, H, W]`` window of ``[B, C, T, H, W]`` clips.

        The VAE is convolutional and causal, so it trains on small windows (far
        cheaper on a CPU) and runs on whole clips; T must be 4k+1, H and W
        multiples of 8.
        """
        if not self.hparams["train_crop"]:
            return clips
        sizes = self.hparams["train_crop"]
        starts = [
            int(torch.randint(0, full - size + 1, (1,)))
            for full, size in zip(clips.shape[2:], sizes, strict=True)
        ]
        t, h, w = (slice(start, start + size) for start, size in zip(starts, sizes, strict=True))
        return clips[:, :, t, h, w]

    def model_step(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        clips = self.target(batch)
        if self.training and len(self.statistics_clips) < self.hparams["latent_statistics_batches"]:
            self.statistics_clips.append(clips.detach().to("cpu", copy=True))
        target = self.random_crop(clips)
        reconstruction, posterior = self.vae(target)
        reconstruction_loss = F.l1_loss(reconstruction, target)
        kl = posterior.kl().mean()
        return {
            "loss": reconstruction_loss + self.hparams["kl_weight"] * kl,
            "reconstruction": reconstruction_loss,
            "kl": kl,
            "psnr": psnr(reconstruction.detach(), target),
            "target": target,
            "output": reconstruction.detach(),
        }

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        out = self.model_step(batch)
        for name in ("loss", "reconstruction", "kl", "psnr"):
            self.log(
                f"train/{name}",
                out[name],
                prog_bar=name == "loss",
                batch_size=out["target"].shape[0],
            )
        return out["loss"]

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        with torch.no_grad():
            target = self.target(batch)
            posterior = self.vae.encode(target)
            reconstruction = self.vae.decode(posterior.mode()).clamp(-1, 1)
        frames = lambda x: x.transpose(1, 2).flatten(0, 1)  # noqa: E731  [B,C,T,H,W] -> [BT,C,H,W]
        ssim = structural_similarity_index_measure(
            (frames(reconstruction) + 1) / 2, (frames(target) + 1) / 2, data_range=1.0
        )
        batch_size = target.shape[0]
        self.log("val/psnr", psnr(reconstruction, target), batch_size=batch_size, sync_dist=True)
        self.log("val/ssim", ssim, batch_size=batch_size, sync_dist=True)  # type: ignore[arg-type]  # torchmetrics types SSIM as Tensor | tuple; a tuple only with return_full_image
        self.log("val/l1", F.l1_loss(reconstruction, target), batch_size=batch_size, sync_dist=True)
        if batch_idx == 0:
            log_video_grid(self, "val/reconstruction", [target[:2], reconstruction[:2]])

    def on_fit_start(self) -> None:
        log_parameter_counts(self)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Every saved file (periodic, last, SIGTERM, export) can serve as a VAE: the
        latent shift/scale the diffusion stages read are fitted to the weights saved."""
        if self.statistics_step != self.global_step:
            self.fit_latent_statistics()
            self.statistics_step = self.global_step
        # The state dict was gathered before this hook.
        for name in self.vae.statistics_buffers:
            checkpoint["state_dict"][f"vae.{name}"] = getattr(self.vae, name).detach().clone()

    @torch.no_grad()
    def fit_latent_statistics(self) -> None:
        """Per-channel mean and std of the posterior modes of the first
        ``latent_statistics_batches`` training batches this run has seen (kept, so a save
        reads no data and draws no random numbers)."""
        latents = [self.vae.encode(clips.to(self.device)).mode() for clips in self.statistics_clips]
        if not latents:
            log.warning("no training batch to fit latent statistics; keeping shift 0, scale 1")
            return
        z = torch.cat(latents).transpose(0, 1).flatten(1)  # [C, everything]
        mean, std = z.mean(dim=1), z.std(dim=1)
        self.vae.set_latent_statistics(mean, std)
        log.info("latent statistics: mean %s std %s", mean.tolist(), std.tolist())
