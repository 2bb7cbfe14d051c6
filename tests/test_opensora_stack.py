"""The OpenSora v1.2 experiments end to end from the three released layouts, at test size:
STDiT3 ``model.safetensors``, the VAE's ``config.json`` + ``model.safetensors`` and a T5
folder (encoder and decoder, with its tokenizer), as hpcai-tech/OpenSora-STDiT-v3,
hpcai-tech/OpenSora-VAE-v1.2 and DeepFloyd/t5-v1_1-xxl ship them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import compose_train
from opensora_vae_reference import deterministic_weights, tiny_vae_config, write_release_folder
from safetensors.torch import save_file

from tora.checkpoints import read_state_dict
from tora.data.schema import decode_video
from tora.models.build import instantiate
from tora.models.opensora_vae import OpenSoraVAE
from tora.models.text_encoders import T5TextEncoder
from tora.train import train

REPO = Path(__file__).resolve().parents[1]
T5_CHANNELS, CAPTION_TOKENS = 32, 16
WORDS = ["a", "red", "blue", "green", "circle", "square", "moves", "left", "right", "on"]
ONE_STEP = [
    "trainer.max_steps=1",
    "trainer.val_check_interval=1",
    "trainer.limit_val_batches=1",
    "trainer.log_every_n_steps=1",
    "model.validation.num_clips=1",
    "model.validation.sample_steps=2",
]


def write_t5_folder(folder: Path) -> Path:
    """A random 1-layer T5 with encoder AND decoder (the full checkpoint T5-XXL ships) and a
    word-level tokenizer that appends ``</s>``, saved as ``save_pretrained`` does."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, T5Config, T5ForConditionalGeneration

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2} | {word: i + 3 for i, word in enumerate(WORDS)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", 1)]
    )
    PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    ).save_pretrained(folder)
    config = T5Config(
        vocab_size=len(vocab),
        d_model=T5_CHANNELS,
        num_layers=1,
        num_decoder_layers=1,
        num_heads=2,
        d_ff=64,
        d_kv=16,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    torch.manual_seed(0)
    T5ForConditionalGeneration(config).save_pretrained(folder)
    return folder


def size_overrides(files: dict[str, Path]) -> list[str]:
    """The test-sized models and the three folders, on the real-scale experiments."""
    return [
        "model/vae=opensora_v1_2_tiny",
        "model/backbone=stdit3_tiny",
        f"model.backbone.caption_channels={T5_CHANNELS}",
        f"model.backbone.model_max_length={CAPTION_TOKENS}",
        f"model.vae_checkpoint={files['vae']}",
        f"model.text_encoder.path={files['t5']}",
        "model.text_encoder.dtype=float32",  # bfloat16 on the GPU
        "trainer=cpu",
        "data.resolution=[64,64]",
        "data.num_frames=17",
    ]


@pytest.fixture(scope="module")
def released(tmp_path_factory) -> dict[str, Path]:
    """The three folders, with random test-sized weights in the released layouts."""
    root = tmp_path_factory.mktemp("released")
    files = {"vae": root / "OpenSora-VAE-v1.2", "t5": write_t5_folder(root / "t5-v1_1-xxl")}
    config = tiny_vae_config()
    config.pop("_target_")
    write_release_folder(deterministic_weights(OpenSoraVAE(**config).state_dict()), files["vae"])
    cfg = compose_train(["experiment=stage1_opensora", *size_overrides(files)], root)
    torch.manual_seed(0)
    backbone = instantiate("backbone", cfg.model.backbone, "test")
    files["stdit3"] = root / "OpenSora-STDiT-v3"
    files["stdit3"].mkdir()
    save_file(backbone.state_dict(), files["stdit3"] / "model.safetensors")
    return files


def test_t5_reads_the_encoder_of_a_full_t5_folder(released):
    """T5EncoderModel: no decoder is built, and transformers never materialises the
    decoder's tensors of a safetensors file (they are unmatched keys)."""
    encoder = T5TextEncoder(released["t5"], max_length=8, dtype="bfloat16")
    assert not any("decoder" in name for name in encoder.state_dict())
    y, mask = encoder.encode(["a red circle moves left"])
    assert y.dtype == torch.bfloat16 and y.shape == (1, 1, 8, T5_CHANNELS)
    assert mask.tolist() == [[1, 1, 1, 1, 1, 1, 0, 0]]  # 5 words and </s>, then padding


def test_motion_vae_stage1_stage2_and_sampling_from_the_released_files(
    tmp_path, released, synthetic_shards
):
    checkpoints = tmp_path / "checkpoints"
    motion_vae = compose_train(
        [
            "experiment=motion_vae_opensora",
            "model/vae=opensora_v1_2_tiny",
            f"model.init_checkpoint={released['vae']}",
            "model.train_crop=[17,64,64]",
            "trainer=cpu",
            "data.resolution=[64,64]",
            "data.num_frames=17",
            *ONE_STEP[:4],
        ],
        tmp_path / "motion_vae",
        synthetic_shards,
        checkpoints,
    )
    train(motion_vae)
    trained = read_state_dict(checkpoints / "motion_vae_opensora.ckpt")
    released_weights = read_state_dict(released["vae"])
    spatial = "spatial_vae.module.encoder.conv_in.weight"
    temporal = "temporal_vae.encoder.conv_in.conv.weight"
    assert torch.equal(trained[f"vae.{spatial}"], released_weights[spatial])  # frozen
    assert not torch.equal(trained[f"vae.{temporal}"], released_weights[temporal])

    common = size_overrides(released) + ONE_STEP
    stage1 = compose_train(
        ["experiment=stage1_opensora", f"model.backbone_checkpoint={released['stdit3']}"] + common,
        tmp_path / "stage1",
        synthetic_shards,
        checkpoints,
    )
    train(stage1)
    stage2 = compose_train(
        ["experiment=stage2_opensora", *common], tmp_path / "stage2", synthetic_shards, checkpoints
    )
    train(stage2)
    assert (checkpoints / "stage2_opensora.ckpt").is_file()

    out = tmp_path / "samples"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "tora.sample",
            f"ckpt={checkpoints / 'stage2_opensora.ckpt'}",
            "prompt=a red circle moves right",
            f"tracks=[{REPO / 'examples/tracks/left_to_right.txt'}]",
            "num_frames=17",
            "resolution=[64,64]",
            "steps=2",
            "device=cpu",
            f"out_dir={out}",
            f"hydra.run.dir={tmp_path}/hydra",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    videos = [v for v in out.glob("*.mp4") if not v.name.endswith("_tracks.mp4")]
    assert len(videos) == 1
    assert decode_video(videos[0].read_bytes()).shape == (17, 64, 64, 3)
