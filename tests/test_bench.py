"""tora.bench on a tiny setting: the JSON it writes, FLOPs growing with clip length,
the DataModule rate and the recomputation that activation checkpointing adds."""

from __future__ import annotations

import json

import pytest
from conftest import compose_config
from omegaconf import OmegaConf

from tora.bench.datamodule import datamodule_throughput
from tora.bench.run import bench

TINY = [
    "batch_size=1",
    "num_frames=5",
    "resolution=[32,32]",
    "warmup_steps=1",
    "steps=2",
    "frame_sweep=[5,9]",
    "sweep_steps=1",
    "peak_matmul_size=256",
    "device=cpu",
]
ROW_NUMBERS = ["step_time_s", "clips_per_s", "tokens_per_s", "flops", "flops_per_s"]
ROW_NUMBERS += ["fraction_of_peak", "peak_memory_bytes", "tokens_per_clip", "forward_flops"]


def compose_bench(overrides: list[str]):
    return compose_config("bench", [*TINY, *overrides])


@pytest.fixture(scope="module")
def result(tmp_path_factory, synthetic_shards):
    output = tmp_path_factory.mktemp("bench") / "out" / "bench.json"
    data = [f"data.train_shards={synthetic_shards}/train-*.tar", "data.num_workers=0"]
    cfg = compose_bench([f"output={output}", "datamodule_batches=2", f"train.overrides={data}"])
    returned = bench(cfg)
    written = json.loads(output.read_text())
    assert written == json.loads(json.dumps(returned))
    return written


def test_json_has_every_row_with_positive_numbers(result):
    assert result["experiment"] == "stage1_flow" and result["device"] == "cpu"
    assert result["xl"] is None, "the XL/2 row runs on CUDA only"
    assert result["parameters"]["trainable"] > 0
    assert result["peak_matmul"]["flops_per_s"]["float32"] > 0
    rows = [result["main"], *result["frame_sweep"]]
    assert [row["num_frames"] for row in rows] == [5, 5, 9]
    for row in rows:
        for key in ROW_NUMBERS:
            assert row[key] > 0, (row["num_frames"], key)
        assert row["flops"] == row["executed_flops"], "no activation checkpointing here"
        assert row["forward_flops"] < row["flops"]
        assert set(row["flops_by_module"]) >= {"Tora"}
    assert result["main"]["tokens_per_clip"] == 2 * 4 * 4  # latent 2 x 4 x 4, patch (1, 1, 1)


def test_flops_grow_with_frames(result):
    short, long = result["frame_sweep"]
    assert long["flops"] > short["flops"]
    assert long["tokens_per_clip"] > short["tokens_per_clip"]
    assert short["flops"] == result["main"]["flops"], "same shape, same count"


def test_datamodule_rate_next_to_training(result):
    data = result["datamodule"]
    assert data["status"] == "ok" and data["batches"] == 2
    assert data["clips_per_s"] > 0 and data["training_clips_per_s"] == result["main"]["clips_per_s"]


def test_missing_shards_are_reported(tmp_path):
    data_cfg = OmegaConf.create(
        {
            "_target_": "tora.data.datamodule.ShardDataModule",
            "train_shards": f"{tmp_path}/none-*.tar",
            "val_shards": None,
            "resolution": [32, 32],
            "num_frames": 5,
        }
    )
    assert datamodule_throughput(data_cfg, 2)["status"] == "no shards (run make data)"


def test_checkpointing_recomputation_is_not_model_flops(result, tmp_path):
    cfg = compose_bench(
        [
            f"output={tmp_path}/bench.json",
            "frame_sweep=[]",
            "steps=1",
            "datamodule_batches=0",
            "train.overrides=['model.backbone.gradient_checkpointing=true']",
        ]
    )
    row = bench(cfg)["main"]
    assert row["flops"] == result["main"]["flops"]
    assert row["executed_flops"] > row["flops"]
