"""Turn a training checkpoint into one ``.safetensors`` file for sampling and sharing.

    python -m tora.convert_checkpoint logs/train/.../last.ckpt checkpoints/stage2.safetensors
    python -m tora.convert_checkpoint logs/train/.../last.ckpt tora_modules.safetensors --tora-modules-only

The input is a Lightning ``.ckpt``, a ``.pt`` / ``.safetensors`` state dict, or the
directory Lightning's DeepSpeedStrategy writes under ``trainer=deepspeed_zero{1,2,3}``
(``<dir>/latest`` names the tag folder ``<dir>/checkpoint/``, which holds
``mp_rank_00_model_states.pt`` and the ZeRO shards ``*_optim_states.pt``); the shards
are merged back into fp32 weights.

Two outputs:

- full (default): every entry of the LightningModule's state dict under its own key
  (``model.backbone.spatial_blocks.0.attn.qkv.weight``, ``vae.…``, ``motion_encoder.…``),
  read back with ``tora.training.checkpoints.read_state_dict``.
- Tora modules (``--tora-modules-only``): the Trajectory Extractor and the
  Motion-guidance Fusers (``model.motion_guidance.``) plus the backbone's temporal
  blocks when the run trained them. The paper trains the temporal blocks together with
  the motion modules (``trainable: temporal``), so they belong to the small file one
  shares; ``apply_tora_modules`` loads it over a module built from the base checkpoint.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from tora.training.checkpoints import read_state_dict

MOTION_GUIDANCE_PREFIX = "model.motion_guidance."
# Backbone parts a Tora-modules file may carry, and the trainable sets
# (VideoDiffusionModule.trainable) that train them.
OPTIONAL_GROUPS = {"temporal_blocks": "model.backbone.temporal_blocks."}
TRAINED_BY = {"temporal_blocks": ("temporal", "full")}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# Rank-0 model-states file of a DeepSpeed tag folder: ZeRO 1/2, then ZeRO 3.
DEEPSPEED_MODEL_STATES = ("mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_model_states.pt")
# Lightning < 2.1 wrapped the module; its keys carry this prefix.
LIGHTNING_WRAPPER_PREFIX = "_forward_module."


def read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The state dict in ``path`` and the run's hyper-parameters (``{}`` where none are stored)."""
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.is_dir():
        return read_deepspeed_checkpoint(path)
    return read_state_dict(path), read_hyper_parameters(path)


def read_hyper_parameters(path: Path) -> dict[str, Any]:
    """The run's hyper-parameters stored in the file ``path`` (``{}`` where none are),
    without reading its tensors."""
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist (a file expected)")
    if path.suffix == ".safetensors":
        with safe_open(str(path), framework="pt") as file:
            metadata = file.metadata() or {}
        # Written by this module with the run's hyper-parameters (trainable included).
        return json.loads(metadata.get("hyper_parameters", "{}"))
    # mmap: only the small hyper-parameter entry is read, not the tensors.
    payload = torch.load(path, map_location="cpu", mmap=True, weights_only=False)
    hyper_parameters = payload.get("hyper_parameters") if isinstance(payload, dict) else None
    return dict(hyper_parameters or {})


def read_deepspeed_checkpoint(directory: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Merge the ZeRO shards of a DeepSpeed checkpoint directory into one state dict:
    trained weights from the optimizer's fp32 master copy, frozen ones and buffers as
    stored (bf16 under bf16-mixed; ``--dtype`` unifies). The hyper-parameters come from
    the Lightning state kept in the model-states file."""
    latest = directory / "latest"
    if not latest.is_file():
        raise FileNotFoundError(
            f"{directory} is a directory but not a DeepSpeed checkpoint: {latest} expected "
            f"(naming the tag folder, e.g. 'checkpoint', that holds {DEEPSPEED_MODEL_STATES[0]} "
            "and *_optim_states.pt)"
        )
    tag_dir = directory / latest.read_text().strip()
    model_states = [tag_dir / name for name in DEEPSPEED_MODEL_STATES if (tag_dir / name).is_file()]
    optim_states = sorted(tag_dir.glob("*_optim_states.pt"))
    if not model_states or not optim_states:
        found = sorted(p.name for p in tag_dir.iterdir()) if tag_dir.is_dir() else "no such folder"
        raise FileNotFoundError(
            f"DeepSpeed checkpoint {directory}: {tag_dir}/{DEEPSPEED_MODEL_STATES[0]} "
            f"(or {DEEPSPEED_MODEL_STATES[1]}) and *_optim_states.pt expected, found {found}"
        )
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    merged = get_fp32_state_dict_from_zero_checkpoint(str(directory))
    state_dict = {
        key.removeprefix(LIGHTNING_WRAPPER_PREFIX): value for key, value in merged.items()
    }
    client_state = torch.load(model_states[0], map_location="cpu", mmap=True, weights_only=False)
    return state_dict, dict(client_state.get("hyper_parameters") or {})


def select_tora_modules(
    state_dict: dict[str, torch.Tensor],
    hyper_parameters: dict[str, Any],
    include: Sequence[str],
    source: Path,
) -> tuple[dict[str, torch.Tensor], list[str], list[str]]:
    """The motion-guidance entries plus each ``include`` group the run trained;
    returns them, the prefixes kept and warnings for the summary."""
    trainable = hyper_parameters.get("trainable")
    prefixes, warnings = [MOTION_GUIDANCE_PREFIX], []
    for group in include:
        if trainable is None:
            warnings.append(f"{source} does not say which parameters trained; {group} included")
        if trainable is None or trainable in TRAINED_BY[group]:
            prefixes.append(OPTIONAL_GROUPS[group])
    if trainable == "full":
        warnings.append(
            "the run trained the whole backbone (trainable=full): its spatial blocks are not in "
            "this file, so applying it over the base does not reproduce the run; share the full file"
        )
    if hyper_parameters.get("train_text_encoder"):
        warnings.append("the run trained the text encoder, which is not in this file")
    selected = {key: value for key, value in state_dict.items() if key.startswith(tuple(prefixes))}
    if not any(key.startswith(MOTION_GUIDANCE_PREFIX) for key in selected):
        raise ValueError(
            f"checkpoint {source}: no {MOTION_GUIDANCE_PREFIX!r} entries (a model without motion "
            f"guidance, e.g. base_t2v?); keys start {sorted(state_dict)[:5]}"
        )
    return selected, prefixes, warnings


def unshared_contiguous(state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], int]:
    """Contiguous tensors, each on its own storage, as safetensors requires; returns them
    and how many were copied. Storage is shared by tied weights and by the fp32 weights
    merged from ZeRO, which are views into one flat partition; every key is kept (a copy
    per alias) so that ``read_state_dict`` + a strict ``load_state_dict`` still work."""
    seen_storages, tensors, copies = set(), {}, 0
    for key, tensor in state_dict.items():
        storage = tensor.untyped_storage().data_ptr()
        if tensor.numel() and storage in seen_storages:
            tensor = tensor.clone(memory_format=torch.contiguous_format)
            copies += 1
        seen_storages.add(storage)
        tensors[key] = tensor.contiguous()
    return tensors, copies


def convert_checkpoint(
    input: str | Path,
    output: str | Path,
    tora_modules_only: bool = False,
    dtype: str | None = None,
    include: Sequence[str] = ("temporal_blocks",),
) -> dict[str, Any]:
    """Write ``input``'s weights (all, or only the Tora modules) to the ``.safetensors``
    file ``output``; ``dtype`` (fp32 / bf16 / fp16) casts the floating-point tensors.
    Returns the summary that ``print_summary`` shows."""
    source, output = Path(input), Path(output)
    if output.suffix != ".safetensors":
        raise ValueError(
            f"output {output}: a .safetensors file expected, got suffix {output.suffix!r}"
        )
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r}: one of {list(DTYPES)} expected")
    unknown = [group for group in include if group not in OPTIONAL_GROUPS]
    if unknown:
        raise ValueError(f"include {unknown}: groups from {list(OPTIONAL_GROUPS)} expected")

    state_dict, hyper_parameters = read_checkpoint(source)
    prefixes, warnings = [""], []
    if tora_modules_only:
        state_dict, prefixes, warnings = select_tora_modules(
            state_dict, hyper_parameters, include, source
        )
    if dtype is not None:
        state_dict = {
            key: value.to(DTYPES[dtype]) if value.is_floating_point() else value
            for key, value in state_dict.items()
        }
    tensors, copies = unshared_contiguous(state_dict)

    content = "tora_modules" if tora_modules_only else "full"
    metadata = {
        "format": "pt",
        "source": str(source.resolve()),
        "num_tensors": str(len(tensors)),
        "content": content,
    }
    if hyper_parameters:
        # The module's constructor arguments, so a full file rebuilds its module alone.
        metadata["hyper_parameters"] = json.dumps(hyper_parameters, default=str)
    output.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(output), metadata=metadata)
    return {
        "source": str(source),
        "output": str(output),
        "content": content,
        "prefixes": prefixes,
        "trainable": hyper_parameters.get("trainable"),
        "tensors": len(tensors),
        "parameters": sum(t.numel() for t in tensors.values()),
        "megabytes": sum(t.numel() * t.element_size() for t in tensors.values()) / 1e6,
        "copied_shared": copies,
        "warnings": warnings,
    }


def apply_tora_modules(module: nn.Module, path: str | Path) -> list[str]:
    """Load the entries of a Tora-modules file (any partial state dict) into ``module``;
    every other weight keeps its value, e.g. the base checkpoint's. Strict for the keys
    present: each must exist in ``module`` with the same shape. Returns the keys loaded."""
    weights = read_state_dict(path)
    if not weights:
        raise ValueError(f"Tora-modules file {path} holds no tensors")
    expected = module.state_dict()
    unknown = sorted(set(weights) - set(expected))
    if unknown:
        raise KeyError(
            f"Tora-modules file {path}: {len(unknown)} entries do not exist in "
            f"{type(module).__name__}: {unknown[:20]}"
        )
    mismatched = [
        f"{key}: file {tuple(value.shape)}, module {tuple(expected[key].shape)}"
        for key, value in weights.items()
        if value.shape != expected[key].shape
    ]
    if mismatched:
        raise ValueError(
            f"Tora-modules file {path}: {len(mismatched)} shapes do not match "
            f"{type(module).__name__}: {mismatched[:20]}"
        )
    module.load_state_dict(weights, strict=False)
    return sorted(weights)


def print_summary(summary: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console()
    table = Table(title=f"{summary['source']} -> {summary['output']}", show_header=False)
    table.add_row("content", summary["content"])
    table.add_row("kept", ", ".join(p or "(everything)" for p in summary["prefixes"]))
    table.add_row("trainable", str(summary["trainable"]))
    table.add_row("tensors", f"{summary['tensors']:,}")
    table.add_row("parameters", f"{summary['parameters']:,}")
    table.add_row("size", f"{summary['megabytes']:.1f} MB")
    table.add_row("copied shared", str(summary["copied_shared"]))
    console.print(table)
    for warning in summary["warnings"]:
        console.print(f"[yellow]warning:[/yellow] {warning}")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        prog="python -m tora.convert_checkpoint", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "input",
        help="Lightning .ckpt, .pt / .safetensors state dict, or DeepSpeed checkpoint directory",
    )
    parser.add_argument("output", help="the .safetensors file to write")
    parser.add_argument(
        "--tora-modules-only",
        action="store_true",
        help=f"keep only {MOTION_GUIDANCE_PREFIX}* and the --include groups the run trained",
    )
    parser.add_argument(
        "--include",
        nargs="*",
        default=["temporal_blocks"],
        choices=list(OPTIONAL_GROUPS),
        help="backbone groups added to --tora-modules-only when trained (default: temporal_blocks, "
        "which the paper trains; give --include alone for the motion modules only)",
    )
    parser.add_argument(
        "--dtype", choices=list(DTYPES), help="cast floating-point tensors (default: as stored)"
    )
    args = parser.parse_args(argv)
    summary = convert_checkpoint(
        args.input, args.output, args.tora_modules_only, args.dtype, args.include
    )
    print_summary(summary)
    return summary


if __name__ == "__main__":
    main()
