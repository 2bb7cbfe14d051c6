"""Loading weights of one sub-module out of a stage's checkpoint.

Stages hand weights to each other through files: a Lightning ``.ckpt``
(``state_dict`` inside), a converted ``.safetensors`` / ``.pt`` state dict, or
the small Tora-modules file. Keys are matched by prefix, strictly.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import nn

from tora.models.vae import CausalVAE3D, shortcut_mode
from tora.utils.state_dict import read_state_dict


def select_prefix(state_dict: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Entries under ``prefix`` with the prefix removed (``""`` keeps everything)."""
    return {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}


def load_submodule_weights(
    module: nn.Module, path: str | Path, prefix: str, strict: bool = True
) -> None:
    """Load ``module`` from the entries of checkpoint ``path`` under ``prefix``.

    Raises with the missing / unexpected keys named (first 20 of each).
    """
    weights = select_prefix(read_state_dict(path), prefix)
    if not weights:
        raise KeyError(f"checkpoint {path}: no entries under prefix {prefix!r}")
    result = module.load_state_dict(weights, strict=False)
    if strict and (result.missing_keys or result.unexpected_keys):
        raise KeyError(
            f"checkpoint {path} (prefix {prefix!r}) does not match {type(module).__name__}: "
            f"missing {result.missing_keys[:20]} unexpected {result.unexpected_keys[:20]}"
        )


def vae_architecture(cfg: dict) -> dict:
    """Every :class:`CausalVAE3D` argument, constructor defaults filled in (a checkpoint
    written before an argument existed was built with its default)."""
    parameters = inspect.signature(CausalVAE3D).parameters
    unknown = sorted(set(cfg) - set(parameters))
    if unknown:
        raise ValueError(
            f"VAE config: unknown arguments {unknown}; expected some of {list(parameters)}"
        )
    full = {name: p.default for name, p in parameters.items()} | dict(cfg)
    full["shortcut"] = shortcut_mode(full["shortcut"])
    return {name: list(v) if isinstance(v, (tuple, ListConfig)) else v for name, v in full.items()}


def stored_hyper_parameter(checkpoint: str | Path, key: str) -> dict | None:
    """The hyper-parameter ``key`` a checkpoint file was trained with, as plain
    containers; None where the file stores none (e.g. a bare .safetensors)."""
    from tora.convert_checkpoint import read_hyper_parameters  # imports this module

    value = read_hyper_parameters(Path(checkpoint)).get(key)
    if isinstance(value, DictConfig):
        return OmegaConf.to_container(value, resolve=True)
    return None if value is None else dict(value)


def check_same_vae(checkpoint: str, cfg: dict) -> None:
    """Refuse VAE weights trained with another architecture: ``norm`` and ``shortcut``
    change the computation without changing a single state-dict key."""
    trained = stored_hyper_parameter(checkpoint, "vae")
    if trained is None:
        return
    trained, wanted = vae_architecture(trained), vae_architecture(dict(cfg))
    differ = {k: (trained[k], wanted[k]) for k in wanted if trained[k] != wanted[k]}
    if differ:
        listing = ", ".join(
            f"{k}: checkpoint {a!r} vs config {b!r}" for k, (a, b) in differ.items()
        )
        raise ValueError(
            f"VAE checkpoint {checkpoint} was trained with another architecture ({listing}): "
            "retrain it (make train-video-vae) or set model.vae to match"
        )


def load_vae_weights(vae: nn.Module, cfg: dict, checkpoint: str) -> None:
    """Load a VAE (``vae.`` prefix) from ``checkpoint`` after checking that it was
    trained with the architecture ``cfg`` describes."""
    check_same_vae(checkpoint, cfg)
    load_submodule_weights(vae, checkpoint, prefix="vae.")
