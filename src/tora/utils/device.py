"""The one device resolver: a config's ``device`` string -> ``torch.device``; and the
CPU cores this process may use."""

from __future__ import annotations

import os
import re

import torch

CHOICES = "auto, cpu, cuda or cuda:N"


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cpu``, ``cuda`` and ``cuda:N`` as given.

    A CUDA device asked for on a machine without one, or an index past the
    visible devices, is an error here rather than deep inside the first ``.to()``.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if not re.fullmatch(r"cuda(:\d+)?", str(name)):
        raise ValueError(f"device: one of {CHOICES} expected, got {name!r}")
    if not torch.cuda.is_available():
        raise ValueError(
            f"device {name!r}: CUDA is not available on this machine "
            "(use device=cpu or device=auto)"
        )
    device = torch.device(name)
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise ValueError(
            f"device {name!r}: only {count} CUDA device(s) visible (cuda:0 to cuda:{count - 1})"
        )
    return device


def available_cpus() -> int:
    """The CPU cores this process may run on (its affinity where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1
