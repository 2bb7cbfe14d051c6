"""Captions of prepared clips.

:class:`Captioner` is the interface: ``caption(video_path, frames uint8 [T, H, W, 3])
-> str``. The default, :class:`SidecarCaptioner`, takes the first non-empty line
of a text file next to the video (``clips/dog.mp4`` -> ``clips/dog.txt``), else
asks an optional captioner of your own (e.g. a vision-language model, configured
as ``captions.captioner: {_target_: my_package.MyCaptioner, ...}``), else returns
``captions.default``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from functools import lru_cache
from pathlib import Path
from typing import Any

import hydra
import numpy as np


class Captioner(ABC):
    @abstractmethod
    def caption(self, video_path: Path, frames: np.ndarray) -> str:
        """The caption of the clip ``frames`` (uint8 ``[T, H, W, 3]`` RGB) cut from ``video_path``."""


@lru_cache(maxsize=64)
def read_sidecar_caption(video_path: Path) -> str | None:
    """First non-empty line of ``<video without suffix>.txt`` (utf-8), or None."""
    sidecar = video_path.with_suffix(".txt")
    if not sidecar.is_file():
        return None
    lines = (line.strip() for line in sidecar.read_text(encoding="utf-8").splitlines())
    return next((line for line in lines if line), None)


class SidecarCaptioner(Captioner):
    """Sidecar text file, else ``fallback`` (a Captioner), else ``default``."""

    def __init__(self, default: str, use_sidecar: bool = True, fallback: Captioner | None = None):
        self.default = default
        self.use_sidecar = use_sidecar
        self.fallback = fallback

    def caption(self, video_path: Path, frames: np.ndarray) -> str:
        if self.use_sidecar:
            sidecar = read_sidecar_caption(video_path)
            if sidecar is not None:
                return sidecar
        if self.fallback is not None:
            return self.fallback.caption(video_path, frames)
        return self.default


def build_captioner(sidecar: bool, default: str, captioner: Any) -> Captioner:
    """The ``captions`` config -> :class:`SidecarCaptioner` (with ``captioner`` as its fallback)."""
    fallback = None
    if captioner is not None:
        if not (isinstance(captioner, dict) and "_target_" in captioner):
            raise ValueError(
                f"captions.captioner: null or a {{_target_: ...}} config expected, got {captioner!r}"
            )
        fallback = hydra.utils.instantiate(captioner)
        if not isinstance(fallback, Captioner):
            raise TypeError(
                f"captions.captioner: a Captioner expected, {captioner['_target_']} made "
                f"{type(fallback).__name__}"
            )
    return SidecarCaptioner(default, sidecar, fallback)
