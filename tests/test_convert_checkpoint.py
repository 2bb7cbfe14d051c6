"""Checkpoint conversion: Lightning .ckpt / state dicts / DeepSpeed ZeRO directories to
.safetensors, full and Tora-modules-only, and the small file applied over a base."""

from __future__ import annotations

import copy
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import PAPER_SET, compose_train
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from tora.checkpoints import (
    CheckpointError,
    WeightsMismatchError,
    convert_checkpoint,
    load_weights_from,
    read_state_dict,
)
from tora.convert_checkpoint import main
from tora.train import instantiate_module

NO_PREREQUISITES = [
    "model.vae_checkpoint=null",
    "model.init_checkpoint=null",
    "model.motion_encoder.checkpoint=null",
]
TORA_PREFIXES = ("model.motion_guidance.", "model.backbone.temporal_blocks.")

# Runs in its own process: DeepSpeed wants a process group and the env of a launcher.
# The shared-memory all-reduce op is compiled on first use (about a minute) and a
# world of one never calls it, so it is switched off; gloo does the rest.
DEEPSPEED_SAVE = """
import sys
import deepspeed
import torch

deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
module = torch.load(sys.argv[1], weights_only=False)
engine, *_ = deepspeed.initialize(
    model=module,
    optimizer=torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-3),
    config={"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 2}},
)
# The layout and client state of Lightning's DeepSpeedStrategy.save_checkpoint.
engine.save_checkpoint(sys.argv[2], client_state={"hyper_parameters": dict(module.hparams)}, tag="checkpoint")
"""


@pytest.fixture(scope="module")
def modules(tmp_path_factory) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(base, trained): a stage-1 module with the paper's trainable set and a copy whose
    motion guidance and temporal blocks moved away from it (the fusers start at zero,
    where they do nothing)."""
    cfg = compose_train(
        ["experiment=stage1_flow", *PAPER_SET, *NO_PREREQUISITES], tmp_path_factory.mktemp("run")
    )
    base = instantiate_module(cfg.model).eval()
    trained = copy.deepcopy(base)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for prefix in TORA_PREFIXES:
            for name, param in trained.named_parameters():
                if name.startswith(prefix):
                    param.add_(0.05 * torch.randn(param.shape, generator=generator))
    return base, trained


def save_lightning_checkpoint(module, path: Path, **hyper_parameters) -> Path:
    torch.save(
        {
            "state_dict": module.state_dict(),
            "hyper_parameters": {**module.hparams, **hyper_parameters},
        },
        path,
    )
    return path


def assert_same_tensors(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert sorted(actual) == sorted(expected)
    for key, value in expected.items():
        assert actual[key].dtype == value.dtype, key
        assert torch.equal(actual[key], value), key


def denoise(module) -> torch.Tensor:
    """The Tora network on a fixed input with motion latents."""
    generator = torch.Generator().manual_seed(1)
    latents = (2, module.vae.latent_channels, 5, 8, 8)
    x = torch.randn(latents, generator=generator)
    motion = torch.randn(latents, generator=generator)
    text = module.encode_text(["a red circle moves right", "a blue square"])
    with torch.no_grad():
        return module.model(
            x, torch.tensor([300.0, 700.0]), text.y, mask=text.mask, motion_latents=motion
        )


def test_full_file_holds_every_tensor_of_the_module(modules, tmp_path):
    _, trained = modules
    ckpt = save_lightning_checkpoint(trained, tmp_path / "last.ckpt")
    summary = convert_checkpoint(ckpt, tmp_path / "full.safetensors")

    expected = trained.state_dict()
    assert_same_tensors(load_file(tmp_path / "full.safetensors"), expected)
    with safe_open(str(tmp_path / "full.safetensors"), framework="pt") as file:
        metadata = file.metadata()
    assert metadata["source"] == str(ckpt.resolve())
    assert metadata["num_tensors"] == str(len(expected)) == str(summary["tensors"])
    assert json.loads(metadata["hyper_parameters"])["trainable"] == "temporal"
    assert summary["parameters"] == sum(v.numel() for v in expected.values())
    # What the sampling code does with it.
    copy.deepcopy(modules[0]).load_state_dict(
        read_state_dict(tmp_path / "full.safetensors"), strict=True
    )


@pytest.mark.parametrize(
    ("trainable", "include", "prefixes"),
    [
        ("temporal", ("temporal_blocks",), TORA_PREFIXES),
        ("temporal", (), TORA_PREFIXES[:1]),
        ("tora_modules", ("temporal_blocks",), TORA_PREFIXES[:1]),
    ],
)
def test_tora_modules_file_holds_motion_guidance_and_trained_temporal_blocks(
    modules, tmp_path, trainable, include, prefixes
):
    _, trained = modules
    ckpt = save_lightning_checkpoint(trained, tmp_path / "last.ckpt", trainable=trainable)
    summary = convert_checkpoint(
        ckpt, tmp_path / "tora.safetensors", tora_modules_only=True, include=include
    )

    expected = {k: v for k, v in trained.state_dict().items() if k.startswith(prefixes)}
    assert_same_tensors(load_file(tmp_path / "tora.safetensors"), expected)
    assert summary["prefixes"] == list(prefixes) and summary["warnings"] == []


def test_tora_modules_trainable_set_from_safetensors_metadata_or_unknown(modules, tmp_path):
    _, trained = modules
    ckpt = save_lightning_checkpoint(trained, tmp_path / "last.ckpt", trainable="tora_modules")
    convert_checkpoint(ckpt, tmp_path / "full.safetensors")
    summary = convert_checkpoint(
        tmp_path / "full.safetensors", tmp_path / "tora.safetensors", tora_modules_only=True
    )
    assert summary["prefixes"] == ["model.motion_guidance."]
    # A bare state dict does not say what trained: the temporal blocks go in, with a warning.
    torch.save(trained.state_dict(), tmp_path / "weights.pt")
    summary = convert_checkpoint(
        tmp_path / "weights.pt", tmp_path / "tora.safetensors", tora_modules_only=True
    )
    assert summary["prefixes"] == list(TORA_PREFIXES)
    assert "does not say which parameters trained" in summary["warnings"][0]


def test_applying_tora_modules_over_the_base_reproduces_the_trained_network(modules, tmp_path):
    base, trained = modules
    ckpt = save_lightning_checkpoint(trained, tmp_path / "last.ckpt")
    convert_checkpoint(ckpt, tmp_path / "tora.safetensors", tora_modules_only=True)

    fresh = copy.deepcopy(base)
    assert not torch.allclose(denoise(fresh), denoise(trained))
    loaded = load_weights_from(fresh, tmp_path / "tora.safetensors", partial=True)
    assert loaded and all(key.startswith(TORA_PREFIXES) for key in loaded)
    assert torch.equal(denoise(fresh), denoise(trained))


def test_a_tora_modules_file_with_unknown_keys_or_wrong_shapes_is_refused(modules, tmp_path):
    base, _ = modules
    fuser_key = next(k for k in base.state_dict() if k.startswith("model.motion_guidance.fusers."))
    save_file(
        {"model.motion_guidance.no_such.weight": torch.zeros(2)}, tmp_path / "unknown.safetensors"
    )
    with pytest.raises(
        WeightsMismatchError,
        match=r"unknown\.safetensors does not match VideoDiffusionModule: 1 unexpected .*no_such\.weight",
    ):
        load_weights_from(copy.deepcopy(base), tmp_path / "unknown.safetensors", partial=True)
    save_file({fuser_key: torch.zeros(3, 5, 7)}, tmp_path / "shape.safetensors")
    with pytest.raises(WeightsMismatchError, match=rf"{fuser_key}: file \(3, 5, 7\), module"):
        load_weights_from(copy.deepcopy(base), tmp_path / "shape.safetensors", partial=True)


def test_shared_and_strided_tensors_are_stored_separately(tmp_path):
    flat = torch.arange(12, dtype=torch.float32)
    tied = torch.randn(3, 4)
    state = {"flat.a": flat[:4], "flat.b": flat[4:].view(2, 4), "tied": tied, "tied_again": tied}
    state.update(transposed=tied.t(), steps=torch.tensor(7))
    torch.save(state, tmp_path / "weights.pt")
    summary = convert_checkpoint(tmp_path / "weights.pt", tmp_path / "out.safetensors")
    assert_same_tensors(load_file(tmp_path / "out.safetensors"), state)
    assert summary["copied_shared"] == 3  # flat.b, tied_again, transposed

    convert_checkpoint(tmp_path / "weights.pt", tmp_path / "bf16.safetensors", dtype="bf16")
    cast = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in state.items()}
    assert_same_tensors(load_file(tmp_path / "bf16.safetensors"), cast)


def test_cli_prints_a_summary(modules, tmp_path, capsys):
    _, trained = modules
    ckpt = save_lightning_checkpoint(trained, tmp_path / "last.ckpt")
    summary = main(
        [str(ckpt), str(tmp_path / "tora.safetensors"), "--tora-modules-only", "--dtype", "fp16"]
    )
    printed = capsys.readouterr().out
    assert "tensors" in printed and "parameters" in printed and "MB" in printed
    assert all(v.dtype == torch.float16 for v in load_file(tmp_path / "tora.safetensors").values())
    assert summary["tensors"] == len(load_file(tmp_path / "tora.safetensors"))


def test_errors_name_the_input_and_what_was_expected(modules, tmp_path):
    _, trained = modules
    with pytest.raises(FileNotFoundError, match="missing.ckpt does not exist"):
        convert_checkpoint(tmp_path / "missing.ckpt", tmp_path / "out.safetensors")
    with pytest.raises(ValueError, match=r"\.safetensors file expected, got suffix '\.pt'"):
        convert_checkpoint(tmp_path / "missing.ckpt", tmp_path / "out.pt")
    with pytest.raises(ValueError, match="dtype 'fp8'"):
        convert_checkpoint(tmp_path / "missing.ckpt", tmp_path / "out.safetensors", dtype="fp8")
    with pytest.raises(ValueError, match=r"include \['spatial_blocks'\]"):
        convert_checkpoint(
            tmp_path / "missing.ckpt", tmp_path / "out.safetensors", include=["spatial_blocks"]
        )

    directory = tmp_path / "epoch=0-step=2.ckpt"
    directory.mkdir()
    with pytest.raises(CheckpointError, match=r"step=2.ckpt: neither a DeepSpeed checkpoint"):
        convert_checkpoint(directory, tmp_path / "out.safetensors")
    (directory / "latest").write_text("checkpoint")
    (directory / "checkpoint").mkdir()
    (directory / "checkpoint" / "zero_pp_rank_0_mp_rank_00_optim_states.pt").touch()
    with pytest.raises(
        FileNotFoundError, match=r"checkpoint/mp_rank_00_model_states\.pt .* expected"
    ):
        convert_checkpoint(directory, tmp_path / "out.safetensors")

    base_model = {
        k: v for k, v in trained.state_dict().items() if not k.startswith("model.motion_guidance.")
    }
    torch.save({"state_dict": base_model}, tmp_path / "base_t2v.ckpt")
    with pytest.raises(ValueError, match="no 'model.motion_guidance.' entries"):
        convert_checkpoint(
            tmp_path / "base_t2v.ckpt", tmp_path / "out.safetensors", tora_modules_only=True
        )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_deepspeed_zero2_directory_converts_to_the_module_weights(modules, tmp_path):
    """A real ZeRO-2 checkpoint written by DeepSpeed on its CPU accelerator (world of one)."""
    _, trained = modules
    torch.save(trained, tmp_path / "module.pt")
    (tmp_path / "save.py").write_text(DEEPSPEED_SAVE)
    env = {
        **os.environ,
        "DS_ACCELERATOR": "cpu",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
        "RANK": "0",
        "LOCAL_RANK": "0",
        "WORLD_SIZE": "1",
    }
    directory = tmp_path / "last.ckpt"
    subprocess.run(
        [sys.executable, str(tmp_path / "save.py"), str(tmp_path / "module.pt"), str(directory)],
        env=env,
        check=True,
        capture_output=True,
        timeout=300,
    )
    assert (directory / "checkpoint" / "mp_rank_00_model_states.pt").is_file()

    summary = convert_checkpoint(directory, tmp_path / "full.safetensors")
    assert_same_tensors(load_file(tmp_path / "full.safetensors"), trained.state_dict())
    assert (
        summary["copied_shared"] > 0
    )  # the trainable weights come out as views of one flat buffer
    convert_checkpoint(directory, tmp_path / "tora.safetensors", tora_modules_only=True)
    expected = {k: v for k, v in trained.state_dict().items() if k.startswith(TORA_PREFIXES)}
    assert_same_tensors(load_file(tmp_path / "tora.safetensors"), expected)
