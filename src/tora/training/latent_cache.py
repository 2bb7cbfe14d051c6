"""Frozen encoders' latents of training clips, kept across epochs and across runs.

The diffusion stages encode every clip with a frozen VAE (posterior mode: the same
clip always gives the same latent), and on the tiny world that encode is most of a
stage-1 step (docs/results.md, training-step benchmark). A clip is identified by its
content (a SHA-256 of the encoder's input, with its dtype and shape), so two datasets
whose samples share a name never share latents, and a map made by other motion
settings is another clip.

With a store directory the latents also outlive the run: they are written at the end
of training to ``<dir>/<part>-<fingerprint>-rank<r>.safetensors``, where the
fingerprint hashes the encoder's config, weights and the run's precision, and the next
run whose encoder has the same fingerprint starts with them (the base model leaves its
video latents to stage 1, an ablation sweep's first run to the others).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

STORE_FORMAT = "tora-latents-1"


class LatentCache:
    """Latents by clip content, on the CPU, for at most ``max_clips`` clips (later clips
    are encoded every time once it is full; nothing is evicted).

    Args:
        max_clips: how many clips' latents to keep (0: the cache is off).
    """

    def __init__(self, max_clips: int) -> None:
        if max_clips < 0:
            raise ValueError(f"latent cache: max_clips >= 0 expected, got {max_clips}")
        self.max_clips = max_clips
        self.latents: dict[str, torch.Tensor] = {}
        self.hits = 0
        self.misses = 0
        self.unsaved = 0  # latents added since the last load or save

    @staticmethod
    def keys(inputs: torch.Tensor) -> list[str]:
        """One key per clip of the ``[B, ...]`` encoder input: the SHA-256 of its bytes,
        its dtype and shape (about 0.5 ms per 17 x 64 x 64 clip on a CPU)."""
        size = "x".join(map(str, inputs.shape[1:]))
        dtype = str(inputs.dtype).removeprefix("torch.")
        return [
            f"{hashlib.sha256(tensor_bytes(clip)).hexdigest()}/{dtype}/{size}"
            for clip in inputs.detach().to("cpu")
        ]

    def encode(
        self, inputs: torch.Tensor, encode: Callable[[torch.Tensor], torch.Tensor]
    ) -> torch.Tensor:
        """Latents of the ``[B, C, T, H, W]`` batch ``inputs``: cached ones looked up,
        the rest encoded with ``encode`` in one call and stored while there is room."""
        keys = self.keys(inputs)
        missing = [i for i, key in enumerate(keys) if key not in self.latents]
        self.hits += len(inputs) - len(missing)
        self.misses += len(missing)
        fresh = dict(zip(missing, encode(inputs[missing]), strict=True)) if missing else {}
        self.add([keys[i] for i in fresh], list(fresh.values()))
        return torch.stack(
            [
                fresh[index] if index in fresh else self.latents[key].to(inputs.device)
                for index, key in enumerate(keys)
            ]
        )

    def store(self, inputs: torch.Tensor, latents: torch.Tensor) -> None:
        """Keep ``latents``, encoded elsewhere from ``inputs``, while there is room."""
        if len(inputs) != len(latents):
            raise ValueError(
                f"latent cache: one latent per clip expected, got {len(latents)} for {len(inputs)}"
            )
        self.add(self.keys(inputs), list(latents))

    def add(self, keys: Sequence[str], latents: Sequence[torch.Tensor]) -> None:
        for key, latent in zip(keys, latents, strict=True):
            if len(self.latents) < self.max_clips and key not in self.latents:
                self.latents[key] = latent.detach().to("cpu", copy=True)
                self.unsaved += 1

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0

    # ------------------------------------------------------------------ store
    def save(self, directory: str | Path, part: str, fingerprint: str, rank: int = 0) -> Path:
        """Write the latents for later runs (each rank its own file, replaced whole)."""
        path = Path(directory) / f"{part}-{fingerprint}-rank{rank}.safetensors"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tensors = {key: latent.contiguous() for key, latent in self.latents.items()}
        save_file(tensors, str(tmp), metadata={"format": STORE_FORMAT, "fingerprint": fingerprint})
        os.replace(tmp, path)
        self.unsaved = 0
        return path

    def load(self, directory: str | Path, part: str, fingerprint: str) -> int:
        """Read the latents that runs with the same encoder left in ``directory`` (every
        rank's file), up to ``max_clips``; returns how many were added."""
        before = len(self.latents)
        for path in sorted(Path(directory).glob(f"{part}-{fingerprint}-rank*.safetensors")):
            with safe_open(str(path), framework="pt") as file:
                metadata = file.metadata() or {}
                if metadata.get("format") != STORE_FORMAT or metadata.get("fingerprint") != (
                    fingerprint
                ):
                    raise ValueError(
                        f"latent store {path}: format {STORE_FORMAT!r} with fingerprint "
                        f"{fingerprint!r} expected, got {metadata}; delete the file"
                    )
                for key in file.keys():  # noqa: SIM118  # safe_open is not a mapping
                    if len(self.latents) >= self.max_clips:
                        break
                    if key not in self.latents:
                        self.latents[key] = file.get_tensor(key)
        return len(self.latents) - before


def encoder_fingerprint(
    encoder: torch.nn.Module, config: Mapping[str, Any] | None, precision: str
) -> str:
    """A short hash of what an encoder computes: its class, config, weights (names,
    dtypes, shapes, values) and the training precision (autocast changes latents)."""
    digest = hashlib.sha256()
    digest.update(f"{type(encoder).__module__}.{type(encoder).__qualname__}".encode())
    digest.update(json.dumps(config, sort_keys=True, default=str).encode())
    digest.update(precision.encode())
    for name, tensor in encoder.state_dict().items():
        digest.update(f"{name}/{tensor.dtype}/{tuple(tensor.shape)}".encode())
        digest.update(tensor_bytes(tensor))
    return digest.hexdigest()[:16]


def tensor_bytes(tensor: torch.Tensor) -> bytes:
    """A tensor's values as raw bytes (any dtype, bf16 and bool included), for hashing."""
    return tensor.detach().to("cpu").contiguous().view(-1).view(torch.uint8).numpy().tobytes()
