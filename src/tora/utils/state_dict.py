"""Reading a flat state dict from any of the checkpoint files this project meets."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file

TORCH_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
WRAPPERS = ("state_dict", "module", "model")  # Lightning, DeepSpeed, OpenSora/DDP


def read_state_dict(path: str | Path, weights_only: bool = False) -> dict[str, torch.Tensor]:
    """The flat state dict stored in ``path``: ``.safetensors``, ``.ckpt`` / ``.pt`` /
    ``.pth`` / ``.bin``, or a directory holding ``model.safetensors`` (a Hugging
    Face snapshot).

    A dict nested under ``state_dict``, ``module`` or ``model`` is unwrapped and
    ``module.`` prefixes (DDP) are stripped. ``weights_only=False`` (for files this
    project wrote) lets ``torch.load`` rebuild the other objects a Lightning
    checkpoint holds, its hyper-parameters; pass ``True`` for downloaded weights.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "model.safetensors"
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint {path} does not exist (train the prerequisite stage first, "
            "e.g. `make train-stage1`, or point the config at an existing file)"
        )
    if path.suffix == ".safetensors":
        payload = load_file(str(path), device="cpu")
    elif path.suffix in TORCH_SUFFIXES:
        payload = torch.load(path, map_location="cpu", weights_only=weights_only)
    else:
        raise ValueError(
            f"checkpoint {path}: unknown format {path.suffix!r}; "
            f"expected .safetensors or one of {', '.join(TORCH_SUFFIXES)}"
        )
    if isinstance(payload, Mapping):
        for wrapper in WRAPPERS:
            if isinstance(payload.get(wrapper), Mapping):
                payload = payload[wrapper]
                break
        if all(torch.is_tensor(value) for value in payload.values()):
            return {key.removeprefix("module."): value for key, value in payload.items()}
    keys = list(payload)[:10] if isinstance(payload, Mapping) else type(payload).__name__
    raise ValueError(f"checkpoint {path}: no state dict of tensors found (top level: {keys})")
