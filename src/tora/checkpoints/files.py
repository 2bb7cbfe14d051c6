"""Reading weight files of every layout this project meets, without ever running code
from them.

- ``.safetensors``: tensors, plus our JSON ``hyper_parameters`` metadata;
- ``.ckpt`` / ``.pt`` / ``.pth`` / ``.bin``: unpickled with ``weights_only=True`` (plain
  containers and tensors only; :data:`SAFE_GLOBALS` adds DeepSpeed's few plain types);
- a DeepSpeed checkpoint directory (``latest`` names the tag folder): the ZeRO shards are
  merged back into fp32 weights;
- a Hugging Face snapshot folder: ``model.safetensors`` / ``diffusion_pytorch_model.safetensors``,
  sharded (``*.safetensors.index.json``) or not.

A dict nested under ``state_dict``, ``module`` or ``model`` is unwrapped and DDP's
``module.`` prefix stripped. Every error names the file.
"""

from __future__ import annotations

import contextlib
import json
import pickle
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy._core.multiarray import _reconstruct
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

TORCH_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
WRAPPERS = ("state_dict", "module", "model")  # Lightning, DeepSpeed, OpenSora/DDP
# Weight files of a Hugging Face snapshot folder (transformers, diffusers), in this order.
SNAPSHOT_FILES = ("model.safetensors", "diffusion_pytorch_model.safetensors")
# Rank-0 model-states file of a DeepSpeed tag folder: ZeRO 1/2, then ZeRO 3.
DEEPSPEED_MODEL_STATES = ("mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_model_states.pt")
# Lightning < 2.1 wrapped the module in DeepSpeed checkpoints; its keys carry this prefix.
LIGHTNING_WRAPPER_PREFIX = "_forward_module."


class CheckpointError(ValueError):
    """A file that cannot be read as the checkpoint it was given as; the message names it."""


def safe_globals() -> list[Any]:
    """The non-container types checkpoint files hold: DeepSpeed's (enums and a named tuple,
    when DeepSpeed is installed), and the numpy array of the random state SwissArmyTransformer
    saves beside the weights (``np_rng_state`` in the released Tora's SAT files), pickled by
    numpy 2 or, under its old module name, numpy 1."""
    reconstruct = _reconstruct
    arrays = [
        reconstruct,
        (reconstruct, "numpy.core.multiarray._reconstruct"),
        np.ndarray,
        np.dtype,
        type(np.dtype(np.uint32)),
    ]
    try:
        from deepspeed.runtime.fp16.loss_scaler import LossScaler
        from deepspeed.runtime.zero.config import ZeroStageEnum
        from deepspeed.utils.tensor_fragment import fragment_address
    except ImportError:
        return arrays
    return [LossScaler, ZeroStageEnum, fragment_address, *arrays]


def refused_global(error: Exception) -> str:
    """The part of torch's weights-only refusal that names what the pickle asked for."""
    lines = [line.strip() for line in str(error).splitlines()]
    named = [line for line in lines if "GLOBAL" in line or "Unsupported" in line]
    return (named[0] if named else lines[-1])[:300]


def load_pickle(path: Path, *, mmap: bool = False) -> Any:
    """``torch.load(path, weights_only=True)`` with errors that name the file: a pickle that
    asks for any other global is refused, never executed."""
    try:
        with torch.serialization.safe_globals(safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as error:
        if "Weights only load failed" in str(error):
            raise CheckpointError(
                f"checkpoint {path}: refused to unpickle it, it asks to run code "
                f"({refused_global(error)}); checkpoints are loaded as tensors and plain "
                "containers only"
            ) from None
        raise CheckpointError(
            f"{path}: not a PyTorch/Lightning checkpoint (torch.load: {error})"
        ) from None
    except (
        Exception
    ) as error:  # the unpickler fails in many ways on bytes that are not a checkpoint
        raise CheckpointError(
            f"{path}: not a PyTorch/Lightning checkpoint, or a truncated one (torch.load: {error})"
        ) from None


@contextlib.contextmanager
def weights_only_torch_load() -> Iterator[None]:
    """Make third-party readers that call ``torch.load(..., weights_only=False)`` (DeepSpeed's
    ``zero_to_fp32``) load weights only, with the same allow-list."""
    original = torch.load

    def guarded(*args: Any, **kwargs: Any) -> Any:
        kwargs["weights_only"] = True
        with torch.serialization.safe_globals(safe_globals()):
            return original(*args, **kwargs)

    torch.load = guarded
    try:
        yield
    finally:
        torch.load = original


@dataclass
class Checkpoint:
    """What a checkpoint holds: its flat state dict and the stored hyper-parameters
    (``{}`` where none are)."""

    path: Path
    state_dict: dict[str, torch.Tensor]
    hyper_parameters: dict[str, Any] = field(default_factory=dict)


def existing(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"checkpoint {path} does not exist (train the prerequisite stage first, "
            "e.g. `make train-stage1`, or point the config at an existing file)"
        )
    return path


def read_checkpoint(path: str | Path) -> Checkpoint:
    """The state dict and hyper-parameters of any supported file or folder."""
    path = existing(path)
    if path.is_dir():
        if (path / "latest").is_file():
            return read_deepspeed_checkpoint(path)
        return Checkpoint(path, read_snapshot(path))
    if path.suffix == ".safetensors":
        return Checkpoint(path, read_safetensors(path), read_hyper_parameters(path))
    if path.suffix in TORCH_SUFFIXES:
        payload = load_pickle(path)
        hyper_parameters = payload.get("hyper_parameters") if isinstance(payload, Mapping) else None
        return Checkpoint(path, unwrap_state_dict(payload, path), dict(hyper_parameters or {}))
    raise CheckpointError(
        f"checkpoint {path}: unknown format {path.suffix!r}; expected .safetensors, one of "
        f"{', '.join(TORCH_SUFFIXES)}, a DeepSpeed checkpoint folder or a Hugging Face snapshot folder"
    )


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The flat state dict of any supported file or folder."""
    return read_checkpoint(path).state_dict


def read_hyper_parameters(path: str | Path) -> dict[str, Any]:
    """The run's hyper-parameters stored with the weights (``{}`` where none are), without
    reading the tensors. They are data: callers validate what they build from them."""
    path = existing(path)
    if path.is_dir():
        if (path / "latest").is_file():
            return read_deepspeed_client_state(path).get("hyper_parameters") or {}
        return {}
    if path.suffix == ".safetensors":
        try:
            with safe_open(str(path), framework="pt") as file:
                metadata = file.metadata() or {}
        except SafetensorError as error:
            raise CheckpointError(f"{path}: not a readable .safetensors file ({error})") from None
        try:
            return json.loads(metadata.get("hyper_parameters", "{}"))
        except json.JSONDecodeError as error:
            raise CheckpointError(
                f"{path}: its 'hyper_parameters' metadata is not JSON ({error})"
            ) from None
    payload = load_pickle(path, mmap=True)
    hyper_parameters = payload.get("hyper_parameters") if isinstance(payload, Mapping) else None
    return dict(hyper_parameters or {})


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path), device="cpu")
    except SafetensorError as error:
        raise CheckpointError(f"{path}: not a readable .safetensors file ({error})") from None


def unwrap_state_dict(payload: Any, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(payload, Mapping):
        for wrapper in WRAPPERS:
            if isinstance(payload.get(wrapper), Mapping):
                payload = payload[wrapper]
                break
        if all(torch.is_tensor(value) for value in payload.values()):
            return {key.removeprefix("module."): value for key, value in payload.items()}
    keys = list(payload)[:10] if isinstance(payload, Mapping) else type(payload).__name__
    raise CheckpointError(f"checkpoint {path}: no state dict of tensors found (top level: {keys})")


def read_snapshot(folder: Path) -> dict[str, torch.Tensor]:
    """A Hugging Face snapshot folder's weights, whole or sharded."""
    for name in SNAPSHOT_FILES:
        if (folder / name).is_file():
            return read_safetensors(folder / name)
        index = folder / f"{name}.index.json"
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            state: dict[str, torch.Tensor] = {}
            for shard in shards:
                state.update(read_safetensors(folder / shard))
            return state
    found = sorted(p.name for p in folder.iterdir())[:20]
    raise CheckpointError(
        f"checkpoint folder {folder}: neither a DeepSpeed checkpoint ('latest' file) nor a "
        f"snapshot holding one of {SNAPSHOT_FILES} (or its .index.json); found {found}"
    )


def deepspeed_files(directory: Path) -> tuple[Path, list[Path]]:
    """The model-states file and the ZeRO optimizer shards of a DeepSpeed checkpoint folder."""
    tag_dir = directory / (directory / "latest").read_text().strip()
    model_states = [tag_dir / name for name in DEEPSPEED_MODEL_STATES if (tag_dir / name).is_file()]
    optim_states = sorted(tag_dir.glob("*_optim_states.pt"))
    if not model_states or not optim_states:
        found = sorted(p.name for p in tag_dir.iterdir()) if tag_dir.is_dir() else "no such folder"
        raise FileNotFoundError(
            f"DeepSpeed checkpoint {directory}: {tag_dir}/{DEEPSPEED_MODEL_STATES[0]} "
            f"(or {DEEPSPEED_MODEL_STATES[1]}) and *_optim_states.pt expected, found {found}"
        )
    return model_states[0], optim_states


def read_deepspeed_client_state(directory: Path) -> dict[str, Any]:
    model_states, _ = deepspeed_files(directory)
    payload = load_pickle(model_states, mmap=True)
    return dict(payload) if isinstance(payload, Mapping) else {}


def read_deepspeed_checkpoint(directory: Path) -> Checkpoint:
    """Merge the ZeRO shards into one state dict: trained weights from the optimizer's fp32
    master copy, frozen ones and buffers as stored. The hyper-parameters come from the
    Lightning state kept in the model-states file."""
    deepspeed_files(directory)
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    with weights_only_torch_load():
        try:
            merged = get_fp32_state_dict_from_zero_checkpoint(str(directory))
        except pickle.UnpicklingError as error:
            raise CheckpointError(
                f"DeepSpeed checkpoint {directory}: refused, it asks to unpickle more than "
                f"weights ({refused_global(error)})"
            ) from None
    state_dict = {
        key.removeprefix(LIGHTNING_WRAPPER_PREFIX): value for key, value in merged.items()
    }
    hyper_parameters = read_deepspeed_client_state(directory).get("hyper_parameters") or {}
    return Checkpoint(directory, state_dict, dict(hyper_parameters))
