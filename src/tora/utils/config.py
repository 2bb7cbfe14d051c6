"""Hydra/OmegaConf plumbing shared by every entry point.

Configs live in the repository's ``configs/`` directory, found from the
installed package (``src/tora`` -> repository root), so entry points work from
any working directory without path hacks.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

import tora

REPO_ROOT = Path(tora.__file__).resolve().parents[2]
CONFIG_DIR = REPO_ROOT / "configs"


def register_resolvers() -> None:
    """Register ``${tora_root:}`` (absolute repository root) once per process."""
    if not OmegaConf.has_resolver("tora_root"):
        OmegaConf.register_new_resolver("tora_root", lambda: str(REPO_ROOT))


register_resolvers()
