"""Training entry point: ``python -m tora.train experiment=<stage>`` (or ``tora-train``).

Every stage (video VAE, base text-to-video, motion VAE, stage 1, stage 2) is the
same script with a different ``experiment=`` config; scale is ``trainer=``.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import hydra
import lightning as L
import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from tora.training.checkpoint_io import resume_checkpoint
from tora.training.preemption import SIGTERM_EXIT_CODE
from tora.training.progress import progress_lines
from tora.utils.config import CONFIG_PATH
from tora.utils.run import instantiate_callbacks, instantiate_loggers, log_run_summary, print_config

if TYPE_CHECKING:
    from tora.data.datamodule import ShardDataModule
    from tora.training.diffusion_module import VideoDiffusionModule
    from tora.training.vae_module import VAEModule

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit (and optionally validate) the configured LightningModule; return final metrics."""
    cfg = resolved(cfg)
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)

    datamodule: ShardDataModule = hydra.utils.instantiate(cfg.data, _convert_="all")
    model = instantiate_module(cfg.model)
    model.check_clip_size(datamodule.num_frames, datamodule.resolution)
    callbacks = instantiate_callbacks(cfg.get("callbacks"))
    loggers = instantiate_loggers(cfg.get("logger"))
    if not loggers:  # Lightning refuses a LearningRateMonitor with nothing to log to
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    trainer: L.Trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers)

    for logger in trainer.loggers:
        logger.log_hyperparams(cast(dict[str, Any], OmegaConf.to_container(cfg, resolve=True)))

    encoding = bool(cfg.get("encode_latents"))
    if encoding:
        label = OmegaConf.select(cfg, "callbacks.progress_bar.label")
        encode_latents(trainer, model, datamodule, list(cfg.encode_latents), label)
    elif cfg.get("train", True):
        ckpt_path = resume_checkpoint(cfg.get("ckpt_path"), trainer)
        try:
            trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
        except SIGTERMException as interrupted:
            raise SystemExit(SIGTERM_EXIT_CODE) from interrupted
    if cfg.get("validate", False):
        trainer.validate(model, datamodule=datamodule)

    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if torch.is_tensor(v)}
    export = cfg.get("export_checkpoint")
    if export and not encoding and not trainer.fast_dev_run:  # type: ignore[attr-defined]  # Lightning sets Trainer.fast_dev_run in trainer/setup.py, undeclared on the class
        export_checkpoint(trainer, Path(export))
    log_run_summary(trainer, model, datamodule, metrics)
    return metrics


LATENT_PARTS = ("video", "motion")


def encode_latents(
    trainer: L.Trainer,
    model: VideoDiffusionModule | VAEModule,
    datamodule: ShardDataModule,
    parts: list[str],
    label: str | None = None,
) -> None:
    """Fill ``model.latent_store`` from one pass over the training clips, without
    training: the encoders' latents of ``parts`` ("video", "motion") for later runs.
    One process reads every training shard, on the trainer's device and precision."""
    from tora.training.diffusion_module import VideoDiffusionModule

    unknown = [part for part in parts if part not in LATENT_PARTS]
    if unknown:
        raise ValueError(f"encode_latents={parts}: parts among {list(LATENT_PARTS)} expected")
    if not (
        isinstance(model, VideoDiffusionModule)
        and model.latent_store
        and model.latent_cache.max_clips
    ):
        raise ValueError(
            "encode_latents: a diffusion experiment with model.latent_store set and "
            "model.latent_cache > 0 expected"
        )
    if "motion" in parts and model.model.motion_guidance is None:
        raise ValueError("encode_latents: 'motion' needs an experiment with motion guidance")
    model.trainer = trainer  # its precision is part of the encoders' fingerprints
    model.to(trainer.strategy.root_device).eval()
    model.read_latent_store()
    loader = datamodule.train_dataloader()
    with trainer.precision_plugin.forward_context():
        for batch in progress_lines(loader, len(loader), "encode", label):
            model.encode_latents(move_data_to_device(batch, model.device), parts)
    model.write_latent_store()


def instantiate_module(cfg: DictConfig) -> VideoDiffusionModule | VAEModule:
    """The LightningModule of a ``model`` config: its ``from_config`` builds the network
    (``tora.models.build``) and the module around it. Sub-configs arrive as plain
    containers: they are stored as hyper-parameters and must load with ``weights_only``."""
    # The model configs name one of these two classes.
    module_class = cast(
        "type[VideoDiffusionModule] | type[VAEModule]", hydra.utils.get_class(cfg._target_)
    )
    return module_class.from_config(cast(dict[str, Any], OmegaConf.to_container(cfg, resolve=True)))


def resolved(cfg: DictConfig) -> DictConfig:
    """A fully resolved copy without the ``hydra`` node, so sub-configs handed to
    modules carry values rather than interpolations into the root."""
    without_hydra = OmegaConf.masked_copy(cfg, [str(key) for key in cfg if key != "hydra"])
    return cast(DictConfig, OmegaConf.create(OmegaConf.to_container(without_hydra, resolve=True)))


def export_checkpoint(trainer: L.Trainer, path: Path) -> None:
    """Write the trained weights to ``path`` (the file later stages read).

    A weights-only Lightning checkpoint (state dict + hyper-parameters, no
    optimizer state); under DeepSpeed the sharded directory is written next to
    it and must be converted with ``python -m tora.convert_checkpoint``.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    trainer.save_checkpoint(tmp, weights_only=True)
    if trainer.is_global_zero:
        if tmp.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        tmp.replace(path)
        log.info("Exported weights to %s", path)


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="train")
def main(cfg: DictConfig) -> None:
    if cfg.extras.get("print_config"):
        print_config(cfg)
    train(cfg)


if __name__ == "__main__":
    main()
