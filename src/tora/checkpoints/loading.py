"""One strict loader with one error format: every weight load in the project (a stage's
sub-module, OpenSora's STDiT3, a Tora-modules file over a base) goes through
:func:`load_weights`."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from tora.checkpoints.files import read_state_dict

SHOWN = 20  # keys listed per kind of mismatch


class WeightsMismatchError(KeyError):
    """Weights that do not fit a module; the message lists missing, unexpected and
    wrong-shape keys and names the source."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


def select_prefix(state_dict: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Entries under ``prefix`` with the prefix removed (``""`` keeps everything)."""
    return {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}


def load_weights(
    module: nn.Module,
    state_dict: dict[str, torch.Tensor],
    source: str | Path,
    prefix: str = "",
    partial: bool = False,
) -> list[str]:
    """Load the entries of ``state_dict`` under ``prefix`` into ``module``; returns the keys loaded.

    Strict: every key must exist in ``module`` with the same shape and, unless
    ``partial`` (a file holding only some modules, applied over weights already loaded),
    every key of ``module`` must be given.
    """
    weights = select_prefix(state_dict, prefix)
    what = f"{source}" + (f" (prefix {prefix!r})" if prefix else "")
    if not weights:
        raise WeightsMismatchError(
            f"checkpoint {what}: no entries for {type(module).__name__}; keys start "
            f"{sorted(state_dict)[:5]}"
        )
    expected = module.state_dict()
    missing = [] if partial else sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    wrong_shape = [
        f"{key}: file {tuple(value.shape)}, module {tuple(expected[key].shape)}"
        for key, value in weights.items()
        if key in expected and value.shape != expected[key].shape
    ]
    if missing or unexpected or wrong_shape:
        parts = [
            f"{len(keys)} {kind} {keys[:SHOWN]}{' ...' if len(keys) > SHOWN else ''}"
            for kind, keys in (
                ("missing", missing),
                ("unexpected", unexpected),
                ("with the wrong shape", wrong_shape),
            )
            if keys
        ]
        raise WeightsMismatchError(
            f"checkpoint {what} does not match {type(module).__name__}: " + "; ".join(parts)
        )
    module.load_state_dict(weights, strict=not partial)
    return sorted(weights)


def load_weights_from(
    module: nn.Module, path: str | Path, prefix: str = "", partial: bool = False
) -> list[str]:
    """:func:`load_weights` from the file or folder ``path``."""
    return load_weights(module, read_state_dict(path), path, prefix, partial)
