"""One LightningModule for every diffusion stage.

- ``experiment=base_t2v``: text-to-video STDiT3 without motion (``motion: null``),
  everything trainable — the stand-in for pretrained OpenSora.
- ``experiment=stage1_flow`` / ``stage2_traj``: Tora. Frozen VAEs, text encoder and
  (part of) the base; trainable set in config; what differs between the stages
  is config only (motion source dense/sparse, init checkpoint, lr).
"""

from __future__ import annotations

import logging
from typing import Any

import hydra
import lightning as L
import torch
from lightning.pytorch.utilities import grad_norm
from omegaconf import DictConfig, OmegaConf

from tora.diffusion import RectifiedFlow
from tora.metrics.base import as_uint8_frames
from tora.models.fusers import MotionGuidance
from tora.models.motion_encoders import build_motion_encoder
from tora.models.stdit3 import STDiT3, STDiT3Config, load_opensora_state_dict
from tora.models.tora import Tora
from tora.models.vae import CausalVAE3D
from tora.motion import MotionRGBConfig, draw_tracks
from tora.training.checkpoints import (
    load_vae_weights,
    read_state_dict,
    select_prefix,
    stored_hyper_parameter,
)
from tora.training.latent_cache import LatentCache
from tora.training.logging import log_parameter_counts, log_video_grid
from tora.training.motion_input import MotionSourceConfig, at_step, motion_condition
from tora.training.optim import build_optimizers

log = logging.getLogger(__name__)

TRAINABLE_SETS = ("full", "temporal", "tora_modules")
TIMESTEP_BUCKETS = 4
VALIDATION_TIMESTEPS = (0.25, 0.5, 0.75)
VAE_ENCODERS = ("motion_vae", "video_vae")


def to_container(cfg: DictConfig | dict | None) -> dict:
    if cfg is None:
        return {}
    return OmegaConf.to_container(OmegaConf.create(cfg), resolve=True)


def build_vae(cfg: dict, checkpoint: str | None) -> CausalVAE3D:
    vae = CausalVAE3D(**cfg)
    if checkpoint:
        load_vae_weights(vae, cfg, checkpoint)
    return vae.requires_grad_(False).eval()


def check_same_motion_rgb(checkpoint: str, motion_rgb: MotionRGBConfig) -> None:
    """The motion VAE must have been trained on the flow-RGB normalisation it now encodes."""
    trained = stored_hyper_parameter(checkpoint, "motion_rgb")
    if trained is None:  # e.g. a bare .safetensors: nothing to compare
        return
    trained = MotionRGBConfig(**trained)
    if trained != motion_rgb:
        raise ValueError(
            f"model.motion_encoder.checkpoint {checkpoint} was trained with motion_rgb {trained}, "
            f"but this run uses {motion_rgb}: pick the same model/motion_rgb for both "
            "(the flow-RGB normalisation must be ONE everywhere)"
        )


class VideoDiffusionModule(L.LightningModule):
    def __init__(
        self,
        backbone: DictConfig | dict,
        text_encoder: DictConfig | dict,
        vae: DictConfig | dict,
        optimizer: DictConfig | dict,
        scheduler: DictConfig | dict | None = None,
        diffusion: DictConfig | dict | None = None,
        vae_checkpoint: str | None = None,
        use_motion: bool = True,
        fuser: DictConfig | dict | None = None,
        motion_encoder: DictConfig | dict | None = None,
        motion_source: DictConfig | dict | None = None,
        motion_rgb: DictConfig | dict | None = None,
        trainable: str = "full",
        train_text_encoder: bool = True,
        backbone_checkpoint: str | None = None,
        init_checkpoint: str | None = None,
        init_modules: list[str] | None = None,
        validation: DictConfig | dict | None = None,
        compile: bool = False,
        latent_cache: int = 0,
    ) -> None:
        super().__init__()
        if trainable not in TRAINABLE_SETS:
            raise ValueError(f"trainable {trainable!r}: one of {TRAINABLE_SETS} expected")
        self.save_hyperparameters()
        vae_cfg = to_container(vae)
        self.vae = build_vae(vae_cfg, vae_checkpoint)
        self.text_encoder = hydra.utils.instantiate(to_container(text_encoder))
        backbone_cfg = STDiT3Config(**to_container(backbone))
        if backbone_cfg.in_channels != self.vae.latent_channels:
            raise ValueError(
                f"backbone.in_channels={backbone_cfg.in_channels} but the VAE has "
                f"latent_channels={self.vae.latent_channels}: the backbone denoises the VAE's "
                "latents, set both to the same count"
            )
        guidance = None
        if use_motion:
            guidance = MotionGuidance(
                hidden_size=backbone_cfg.hidden_size,
                depth=backbone_cfg.depth,
                latent_channels=self.vae.latent_channels,
                patch_size=tuple(backbone_cfg.patch_size),
                **to_container(fuser),
            )
            encoder_cfg = to_container(motion_encoder)
            kind = encoder_cfg.pop("kind")
            checkpoint = encoder_cfg.pop("checkpoint", None)
            encoder_vae = build_vae(vae_cfg, checkpoint) if kind in VAE_ENCODERS else None
            self.motion_encoder = build_motion_encoder(kind, vae=encoder_vae, **encoder_cfg)
            self.motion_source = MotionSourceConfig(**to_container(motion_source))
            self.motion_rgb = MotionRGBConfig(**to_container(motion_rgb))
            if kind == "motion_vae" and checkpoint:
                check_same_motion_rgb(checkpoint, self.motion_rgb)
        self.model = Tora(STDiT3(backbone_cfg), guidance)
        self.flow = RectifiedFlow(**to_container(diffusion))
        self.validation_cfg = {
            "sample_steps": 10,
            "cfg_scale": 4.0,
            "num_clips": 2,
            "seed": 0,
            "image_every_n_steps": 100,
        }
        self.validation_cfg.update(to_container(validation))

        if backbone_checkpoint:
            load_opensora_state_dict(self.model.backbone, backbone_checkpoint, strict=True)
        if init_checkpoint:
            self.load_init_checkpoint(
                init_checkpoint, init_modules or ["model.backbone", "text_encoder"]
            )
        self.set_trainable(trainable, train_text_encoder)
        if compile:
            self.model.backbone.compile()
        self.latent_cache = LatentCache(latent_cache)

    def configure_optimizers(self) -> dict:
        return build_optimizers(self, self.hparams.optimizer, self.hparams.scheduler)

    # ----------------------------------------------------------------- set-up
    def load_init_checkpoint(self, path: str, modules: list[str]) -> None:
        """Initialise the named sub-modules (dotted paths) from a previous stage."""
        state = read_state_dict(path)
        for name in modules:
            module = self.get_submodule(name)
            weights = select_prefix(state, name + ".")
            if not weights:
                raise KeyError(f"init checkpoint {path}: no entries for module {name!r}")
            module.load_state_dict(weights, strict=True)
            log.info("initialised %s from %s (%d tensors)", name, path, len(weights))

    def set_trainable(self, trainable: str, train_text_encoder: bool) -> None:
        self.requires_grad_(False)
        if trainable == "full":
            self.model.backbone.requires_grad_(True)
        elif trainable == "temporal":
            self.model.backbone.temporal_blocks.requires_grad_(True)
        if self.model.motion_guidance is not None:
            self.model.motion_guidance.requires_grad_(True)
        if train_text_encoder:
            self.text_encoder.requires_grad_(True)
        # OpenSora keeps the rotary frequencies as a parameter with gradients off.
        for name, param in self.model.backbone.named_parameters():
            if name.startswith("rope."):
                param.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        self.vae.eval()
        if hasattr(self, "motion_encoder"):
            self.motion_encoder.eval()
        return self

    # ------------------------------------------------------------ conditions
    @torch.no_grad()
    def encode_video(self, video: torch.Tensor, clip_ids: list[str] | None = None) -> torch.Tensor:
        """The frozen VAE's normalised latents; looked up in / added to the latent
        cache when it is on and the clips are identified."""
        if self.latent_cache.max_clips and clip_ids is not None:
            return self.latent_cache.encode(video, clip_ids, self.vae.encode_latents)
        return self.vae.encode_latents(video)

    def encode_text(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        y, mask = self.text_encoder.encode(captions)
        return y.to(self.device), mask.to(self.device)

    def null_text(self, batch_size: int) -> torch.Tensor:
        """The backbone's learned null caption ``[B, 1, L, C]`` (OpenSora's y_embedding)."""
        return self.model.backbone.null_caption(batch_size)

    def motion_inputs(self, batch: dict[str, Any], generator=None) -> dict[str, torch.Tensor]:
        """Flow-RGB condition and its latents (empty for the base model)."""
        if self.model.motion_guidance is None:
            return {}
        source = at_step(self.motion_source, self.global_step)
        condition = motion_condition(batch, source, self.motion_rgb, generator)
        with torch.no_grad():
            condition["motion_latents"] = self.motion_encoder.encode(condition["motion_rgb"])
        return condition

    def model_fn(self, x, t, y, mask, **extra):
        """The network as the rectified-flow code calls it (t in [0, 1] -> OpenSora's 0..1000)."""
        return self.model(x, t * 1000.0, y, mask=mask, **extra)

    # -------------------------------------------------------------- training
    def conditions(self, batch: dict[str, Any], generator=None) -> tuple:
        """Video latents ``x0``, caption ``y`` / ``mask``, the model's further inputs
        ``extra`` (fps, motion latents) and the motion condition it came from."""
        x0 = self.encode_video(batch["video"], LatentCache.batch_clip_ids(batch))
        y, mask = self.encode_text(batch["caption"])
        motion = self.motion_inputs(batch, generator)
        extra = {"fps": batch["fps"].to(x0)} if "fps" in batch else {}
        if "motion_latents" in motion:
            extra["motion_latents"] = motion["motion_latents"]
        return x0, y, mask, extra, motion

    def model_step(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        x0, y, mask, extra, motion = self.conditions(batch)
        out = self.flow.training_losses(self.model_fn, x0, dict(y=y, mask=mask, **extra))
        out["motion"] = motion
        return out

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        out = self.model_step(batch)
        losses, t = out["loss"], out["t"]
        loss = losses.mean()
        batch_size = losses.shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size)
        if self.latent_cache.max_clips:
            self.log("train/latent_cache_hit_rate", self.latent_cache.hit_rate)
        bucket = (t * TIMESTEP_BUCKETS).long().clamp(max=TIMESTEP_BUCKETS - 1)
        for b in range(TIMESTEP_BUCKETS):
            chosen = bucket == b
            if chosen.any():
                self.log(
                    f"train/loss_t{b / TIMESTEP_BUCKETS:.2f}-{(b + 1) / TIMESTEP_BUCKETS:.2f}",
                    losses[chosen].mean(),
                    batch_size=int(chosen.sum()),
                )
        if (
            self.global_step % self.validation_cfg["image_every_n_steps"] == 0
            and "motion_rgb" in out["motion"]
        ):
            log_video_grid(
                self, "train/motion_rgb", [batch["video"][:2], out["motion"]["motion_rgb"][:2]]
            )
        return loss

    def on_before_optimizer_step(self, optimizer) -> None:
        norms = grad_norm(self, norm_type=2)
        if "grad_2.0_norm_total" in norms:
            self.log("train/grad_norm", norms["grad_2.0_norm_total"])

    def on_fit_start(self) -> None:
        log_parameter_counts(self)

    # ------------------------------------------------------------ validation
    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """Loss at fixed timesteps with fixed noise (comparable across runs), and
        sampled clips for the first batch."""
        generator = torch.Generator().manual_seed(self.validation_cfg["seed"] + batch_idx)
        x0, y, mask, extra, motion = self.conditions(batch, generator)
        noise = torch.randn(x0.shape, generator=generator).to(x0)
        losses = []
        conditions = dict(y=y, mask=mask, **extra)
        for t_value in VALIDATION_TIMESTEPS:
            t = torch.full((x0.shape[0],), t_value, device=x0.device)
            loss = self.flow.training_losses(self.model_fn, x0, conditions, t=t, noise=noise)[
                "loss"
            ].mean()
            self.log(f"val/loss_t{t_value}", loss, batch_size=x0.shape[0], sync_dist=True)
            losses.append(loss)
        self.log("val/loss", torch.stack(losses).mean(), batch_size=x0.shape[0], sync_dist=True)
        if batch_idx == 0:
            self.log_samples(batch, y, mask, extra, motion, noise)

    @torch.no_grad()
    def sample_latents(self, noise, y, mask, extra, steps, cfg_scale, progress=False):
        return self.flow.sample(
            self.model_fn,
            noise,
            text_cond=dict(y=y, mask=mask),
            null_text_cond=dict(y=self.null_text(y.shape[0]).to(y), mask=mask),
            guidance_scale=cfg_scale,
            steps=steps,
            extra=extra,
            progress=progress,
        )

    def log_samples(self, batch, y, mask, extra, motion, noise) -> None:
        n = min(self.validation_cfg["num_clips"], noise.shape[0])
        extra_n = {k: v[:n] for k, v in extra.items()}
        if "motion_latents" in extra_n:  # extract the motion features once, not per step
            extra_n["motion_features"] = self.model.motion_guidance.extract(
                extra_n.pop("motion_latents")
            )
        latents = self.sample_latents(
            noise[:n],
            y[:n],
            mask[:n],
            extra_n,
            self.validation_cfg["sample_steps"],
            self.validation_cfg["cfg_scale"],
        )
        video = self.vae.decode_latents(latents).clamp(-1, 1)
        rows = [batch["video"][:n]]
        if "motion_rgb" in motion:
            rows.append(motion["motion_rgb"][:n])
            if motion["track_mask"][:n].any():
                video = self.overlay_tracks(video, motion["tracks"][:n], motion["track_mask"][:n])
        rows.append(video)
        log_video_grid(self, "val/samples", rows)

    @staticmethod
    def overlay_tracks(
        video: torch.Tensor, tracks: torch.Tensor, track_mask: torch.Tensor
    ) -> torch.Tensor:
        """Draw the requested tracks on clips ``[B, 3, T, H, W]`` in [-1, 1]."""
        drawn = []
        for clip, clip_tracks, clip_mask in zip(video, tracks, track_mask):
            out = draw_tracks(as_uint8_frames(clip), clip_tracks[clip_mask].cpu())
            drawn.append(torch.from_numpy(out).permute(3, 0, 1, 2).float() / 127.5 - 1)
        return torch.stack(drawn).to(video)
