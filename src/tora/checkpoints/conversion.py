"""Writing checkpoints as one ``.safetensors`` file: the whole module, or only the Tora
modules (the small shareable file).

- full: every entry of the LightningModule's state dict under its own key
  (``model.backbone.spatial_blocks.0.attn.qkv.weight``, ``vae.…``, ``motion_encoder.…``),
  with the run's hyper-parameters as JSON metadata, so the file rebuilds its model alone.
- Tora modules: the Trajectory Extractor and the Motion-guidance Fusers
  (``model.motion_guidance.``) plus the backbone's temporal blocks when the run trained
  them (the paper trains them with the motion modules, ``trainable: temporal``); loaded
  over a model built from the base checkpoint with ``load_weights(..., partial=True)``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from tora.checkpoints.files import read_checkpoint

MOTION_GUIDANCE_PREFIX = "model.motion_guidance."
# Backbone parts a Tora-modules file may carry, and the trainable sets that train them.
OPTIONAL_GROUPS = {"temporal_blocks": "model.backbone.temporal_blocks."}
TRAINED_BY = {"temporal_blocks": ("temporal", "full")}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def trained_set(hyper_parameters: dict[str, Any]) -> str | None:
    """The run's trainable set (``training.trainable``; flat in files written before)."""
    training = hyper_parameters.get("training")
    if isinstance(training, dict) and "trainable" in training:
        return training["trainable"]
    return hyper_parameters.get("trainable")


def select_tora_modules(
    state_dict: dict[str, torch.Tensor],
    hyper_parameters: dict[str, Any],
    include: Sequence[str],
    source: Path,
) -> tuple[dict[str, torch.Tensor], list[str], list[str]]:
    """The motion-guidance entries plus each ``include`` group the run trained;
    returns them, the prefixes kept and warnings for the summary."""
    trainable = trained_set(hyper_parameters)
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
    training = hyper_parameters.get("training") or hyper_parameters
    if training.get("train_text_encoder"):
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
    merged from ZeRO (views into one flat partition); every key is kept, a copy per alias,
    so that a strict load still works."""
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
    Returns a summary (what was kept, sizes, warnings)."""
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

    checkpoint = read_checkpoint(source)
    state_dict, hyper_parameters = checkpoint.state_dict, checkpoint.hyper_parameters
    prefixes, warnings = [""], list[str]()
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
        metadata["hyper_parameters"] = json.dumps(hyper_parameters, default=str)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(output.name + ".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    tmp.replace(output)
    return {
        "source": str(source),
        "output": str(output),
        "content": content,
        "prefixes": prefixes,
        "trainable": trained_set(hyper_parameters),
        "tensors": len(tensors),
        "parameters": sum(t.numel() for t in tensors.values()),
        "megabytes": sum(t.numel() * t.element_size() for t in tensors.values()) / 1e6,
        "copied_shared": copies,
        "warnings": warnings,
    }
