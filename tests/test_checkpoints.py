"""The one checkpoint module: every format read safely, errors that name the file, and
nothing a file names is ever run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from tora.checkpoints import CheckpointError, read_checkpoint, read_hyper_parameters
from tora.inference import load_components
from tora.models.build import build_vae, instantiate


class WritesMarker:
    """A pickle payload that, if unpickled with ``weights_only=False``, creates a file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def hostile_checkpoint(path: Path, marker: Path) -> Path:
    torch.save(
        {"state_dict": {"w": torch.zeros(1)}, "hyper_parameters": WritesMarker(marker)}, path
    )
    return path


@pytest.mark.parametrize("suffix", [".ckpt", ".pt", ".bin"])
def test_a_pickle_that_runs_code_is_refused_and_nothing_runs(tmp_path, suffix):
    marker = tmp_path / "pwned"
    path = hostile_checkpoint(tmp_path / f"model{suffix}", marker)
    for read in (read_checkpoint, read_hyper_parameters):
        with pytest.raises(CheckpointError, match=rf"{path.name}: refused to unpickle"):
            read(path)
    assert not marker.exists()


def test_loaders_of_every_role_refuse_the_hostile_pickle(tmp_path):
    """As ckpt= of sampling, as model.vae_checkpoint, as a Tora-modules file."""
    marker = tmp_path / "pwned"
    path = hostile_checkpoint(tmp_path / "stage2.ckpt", marker)
    with pytest.raises(CheckpointError, match="stage2.ckpt: refused to unpickle"):
        load_components(path)
    with pytest.raises(CheckpointError, match="stage2.ckpt: refused to unpickle"):
        load_components(path, base_ckpt=path)
    with pytest.raises(CheckpointError, match="stage2.ckpt: refused to unpickle"):
        build_vae({"latent_channels": 4, "base_channels": 8, "norm_groups": 4}, path)
    assert not marker.exists()


def test_the_sample_cli_refuses_it_too(tmp_path):
    marker = tmp_path / "pwned"
    path = hostile_checkpoint(tmp_path / "stage2.ckpt", marker)
    result = subprocess.run(
        [sys.executable, "-m", "tora.sample", f"ckpt={path}", f"hydra.run.dir={tmp_path}/run"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0
    assert "refused to unpickle" in result.stderr and str(path) in result.stderr
    assert not marker.exists()


def test_safetensors_metadata_cannot_name_code_to_call(tmp_path):
    path = tmp_path / "model.safetensors"
    hparams = {
        "backbone": {"_target_": "os.system", "command": f"touch {tmp_path}/pwned"},
        "vae": {"latent_channels": 4},
        "text_encoder": {"_target_": "tora.models.text_encoders.CaptionEncoder"},
    }
    save_file({"w": torch.zeros(1)}, str(path), metadata={"hyper_parameters": json.dumps(hparams)})
    with pytest.raises(
        ValueError, match=r"model.safetensors: backbone._target_ 'os.system' is not"
    ):
        load_components(path)
    assert not (tmp_path / "pwned").exists()
    with pytest.raises(ValueError, match="text_encoder._target_ 'subprocess.run'"):
        instantiate("text_encoder", {"_target_": "subprocess.run"}, "a file")


def test_a_file_that_is_not_a_checkpoint_is_named(tmp_path):
    text = tmp_path / "notes.ckpt"
    text.write_text("these are my notes, not weights\n")
    with pytest.raises(CheckpointError, match=r"notes.ckpt: not a PyTorch/Lightning checkpoint"):
        read_checkpoint(text)
    truncated = tmp_path / "cut.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1000)}}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:500])
    with pytest.raises(CheckpointError, match=r"cut.ckpt: not a PyTorch/Lightning checkpoint"):
        read_checkpoint(truncated)
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x00" * 16)
    with pytest.raises(CheckpointError, match="broken.safetensors: not a readable .safetensors"):
        read_checkpoint(broken)
    (tmp_path / "notes.txt").write_text("weights?")
    with pytest.raises(CheckpointError, match=r"notes.txt: unknown format '\.txt'"):
        read_checkpoint(tmp_path / "notes.txt")


def test_a_vae_checkpoint_given_as_the_diffusion_model_is_named(tmp_path):
    path = tmp_path / "video_vae.ckpt"
    torch.save(
        {
            "state_dict": {"vae.x": torch.zeros(1)},
            "hyper_parameters": {"input": "video", "vae": {}},
        },
        path,
    )
    with pytest.raises(
        ValueError, match=r"video_vae.ckpt is a VAE checkpoint \(a video VAE stage\)"
    ):
        load_components(path)


def test_snapshot_folders_whole_and_sharded(tmp_path):
    whole = tmp_path / "whole"
    whole.mkdir()
    save_file({"a": torch.ones(2)}, str(whole / "diffusion_pytorch_model.safetensors"))
    assert torch.equal(read_checkpoint(whole).state_dict["a"], torch.ones(2))
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    save_file({"a": torch.ones(2)}, str(sharded / "model-00001-of-00002.safetensors"))
    save_file({"b": torch.zeros(3)}, str(sharded / "model-00002-of-00002.safetensors"))
    index = {
        "weight_map": {
            "a": "model-00001-of-00002.safetensors",
            "b": "model-00002-of-00002.safetensors",
        }
    }
    (sharded / "model.safetensors.index.json").write_text(json.dumps(index))
    assert sorted(read_checkpoint(sharded).state_dict) == ["a", "b"]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="neither a DeepSpeed checkpoint"):
        read_checkpoint(empty)
    assert os.listdir(empty) == []
