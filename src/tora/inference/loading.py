"""Rebuilding Tora from one checkpoint, or from a Tora-modules file over a full one."""

from __future__ import annotations

import logging
from pathlib import Path

from tora.checkpoints import load_weights, load_weights_from, read_checkpoint
from tora.models.build import ToraComponents, build_tora, component_config

log = logging.getLogger(__name__)


def load_components(ckpt: str | Path, base_ckpt: str | Path | None = None) -> ToraComponents:
    """The components of a trained diffusion model, weights loaded strictly.

    ``ckpt`` is a Lightning ``.ckpt``, a full ``.safetensors`` from ``tora.convert_checkpoint``
    or a DeepSpeed folder; with ``base_ckpt``, ``ckpt`` is a Tora-modules file applied
    over the full checkpoint ``base_ckpt``.
    """
    ckpt = Path(ckpt)
    if not ckpt.exists():
        raise FileNotFoundError(
            f"checkpoint {ckpt} does not exist (train it with `make train-stage2`, or pass ckpt=PATH "
            "to a Lightning .ckpt, a converted .safetensors, or a Tora-modules file with base_ckpt=)"
        )
    full = Path(base_ckpt) if base_ckpt else ckpt
    checkpoint = read_checkpoint(full)
    hparams = checkpoint.hyper_parameters
    if "input" in hparams and "vae" in hparams and "backbone" not in hparams:
        raise ValueError(
            f"checkpoint {full} is a VAE checkpoint (a {hparams['input']} VAE stage), not a "
            "diffusion model: pass a stage-1 / stage-2 (or base) checkpoint as ckpt="
        )
    config = component_config(hparams)
    if "backbone" not in config:
        raise ValueError(
            f"checkpoint {full}: no model hyper-parameters stored (a Lightning .ckpt or a full "
            ".safetensors from tora.convert_checkpoint expected); a Tora-modules-only file needs "
            "base_ckpt= (a full checkpoint of the same model) to be applied over"
        )
    components = build_tora(config, load_weights=False, source=f"checkpoint {full}")
    modules = components.modules()
    load_weights(modules, checkpoint.state_dict, full)
    if base_ckpt:
        loaded = load_weights_from(modules, ckpt, partial=True)
        log.info("applied %d Tora-module tensors from %s over %s", len(loaded), ckpt, base_ckpt)
    modules.eval()
    return components
