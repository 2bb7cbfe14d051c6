"""The CogVideoX family through the CLIs on CPU: sampling from a tiny released-Tora download
(``python -m tora.sample model=cogvideox ckpt=<Tora_T2V_diffusers>``) and a short tiny
stage-1 run (``python -m tora.train experiment=stage1_cogvideox model=cogvideox_tiny``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import compose_train
from diffusers import AutoencoderKLCogVideoX, CogVideoXDPMScheduler
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_cogvideox import TINY, save_diffusers_layout, tiny_tora

from tora.data.schema import decode_video
from tora.train import train

REPO = Path(__file__).resolve().parents[1]
TRACK = REPO / "examples/tracks/left_to_right.txt"


def save_tiny_t5(text_encoder: Path, tokenizer_dir: Path, d_model: int) -> None:
    """A random 1-layer T5 encoder and a word-level tokenizer, in separate folders as a
    diffusers download keeps them."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, T5Config, T5EncoderModel

    words = ["a", "red", "circle", "moves", "right", "to", "the"]
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2} | {word: i + 3 for i, word in enumerate(words)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", 1)]
    )
    PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    ).save_pretrained(tokenizer_dir)
    config = T5Config(
        vocab_size=len(vocab), d_model=d_model, num_layers=1, num_heads=2, d_ff=64, d_kv=16
    )
    T5EncoderModel(config).save_pretrained(text_encoder)


@pytest.fixture(scope="module")
def tora_download(tmp_path_factory) -> Path:
    """A tiny ``Tora_T2V_diffusers`` download: transformer/ with the Tora keys, vae/,
    text_encoder/, tokenizer/, scheduler/ and model_index.json, random weights."""
    root = save_diffusers_layout(tiny_tora(), tmp_path_factory.mktemp("Tora_T2V_diffusers"))
    torch.manual_seed(0)
    AutoencoderKLCogVideoX(
        block_out_channels=(16, 16, 16, 16),
        layers_per_block=1,
        norm_num_groups=4,
        latent_channels=16,
        scaling_factor=0.7,
        sample_height=64,
        sample_width=64,
    ).save_pretrained(root / "vae")
    save_tiny_t5(root / "text_encoder", root / "tokenizer", TINY["text_embed_dim"])
    CogVideoXDPMScheduler(prediction_type="v_prediction", snr_shift_scale=1.0).save_config(
        root / "scheduler"
    )
    return root


@pytest.mark.parametrize("memory", [[], ["dtype=bfloat16", "cpu_offload=true"]])
def test_sample_cli_with_a_released_diffusers_download(tmp_path, tora_download, memory):
    out = tmp_path / "out"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "tora.sample",
            "model=cogvideox",
            f"ckpt={tora_download}",
            f"tracks=[{TRACK}]",
            "prompt=a red circle moves to the right",
            "num_frames=17",
            "resolution=[64,64]",
            "steps=3",
            "cfg_scale=6",
            "dynamic_cfg=true",
            "motion_in_guidance=false",
            "device=cpu",
            f"out_dir={out}",
            f"hydra.run.dir={tmp_path}/hydra",
            *memory,
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    video = out / "000_a_red_circle_moves_to_the_right.mp4"
    frames = decode_video(video.read_bytes())
    assert frames.shape == (17, 64, 64, 3)
    assert (out / "000_a_red_circle_moves_to_the_right_tracks.mp4").is_file()
    assert json.loads((out / "000_a_red_circle_moves_to_the_right_tracks.json").read_text())


def test_stage1_cogvideox_tiny_run_lowers_the_loss(tmp_path, synthetic_shards):
    cfg = compose_train(
        [
            "experiment=stage1_cogvideox",
            "model=cogvideox_tiny",
            "model.optimizer.lr=1e-3",
            "model.scheduler.lr_lambda.warmup_steps=1",
            "trainer.max_steps=16",
            "trainer.val_check_interval=4",
            "trainer.limit_val_batches=1",
            "trainer.log_every_n_steps=1",
        ],
        tmp_path,
        synthetic_shards,
    )
    train(cfg)
    assert (tmp_path / "checkpoints" / "stage1_cogvideox.ckpt").is_file()
    events = next((tmp_path / "logs").rglob("events.out.tfevents.*"))
    accumulator = EventAccumulator(str(events.parent))
    accumulator.Reload()
    val = [event.value for event in accumulator.Scalars("val/loss")]
    assert len(val) == 4
    assert val[-1] < val[0], val


def test_evaluate_a_released_download_on_held_out_clips(tmp_path, tora_download, synthetic_shards):
    """The release has no evaluation (its issues #43, #48): ours takes it as ckpt= with model=."""
    from conftest import compose_config

    from tora.evaluate import evaluate

    cfg = compose_config(
        "evaluate",
        [
            "model=cogvideox",
            f"ckpt={tora_download}",
            f"data.train_shards={synthetic_shards}/train-*.tar",
            f"data.val_shards={synthetic_shards}/val-*.tar",
            f"paths.log_dir={tmp_path}/logs",
            f"out_dir={tmp_path}/eval",
            "num_samples=2",
            "batch_size=2",
            "steps=2",
            "motion_in_guidance=false",
            "device=cpu",
        ],
    )
    metrics = evaluate(cfg)
    assert set(metrics["variants"]) == {"tora", "no_control"}
    assert len(metrics["variants"]["tora"]["trajerror_per_clip"]) == 2
    assert (tmp_path / "eval" / "metrics.json").is_file()
