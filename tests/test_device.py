"""tora.utils.device.resolve_device: the accepted names, and errors naming the value."""

from __future__ import annotations

import pytest
import torch

from tora.utils.device import resolve_device


def test_cpu_and_auto_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cpu")


def test_cuda_names_with_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda") == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(ValueError, match=r"'cuda:2': only 2 CUDA device\(s\) visible"):
        resolve_device("cuda:2")


@pytest.mark.parametrize("name", ["cuda", "cuda:0"])
def test_cuda_without_cuda_is_a_clear_error(monkeypatch, name):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=f"device '{name}': CUDA is not available"):
        resolve_device(name)


@pytest.mark.parametrize("name", ["gpu", "mps", "cuda:x", "CPU", "", "cuda:0:1"])
def test_unknown_names_are_refused_with_the_choices(name):
    with pytest.raises(ValueError, match=rf"auto, cpu, cuda or cuda:N expected, got '{name}'"):
        resolve_device(name)


def test_available_cpus_is_this_process_s_share_of_the_machine():
    import os

    from tora.utils.device import available_cpus

    assert 1 <= available_cpus() <= (os.cpu_count() or 1)
    if hasattr(os, "sched_getaffinity"):
        assert available_cpus() == len(os.sched_getaffinity(0))
