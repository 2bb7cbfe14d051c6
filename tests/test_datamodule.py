"""ShardDataModule: batches, bad data, configs, DDP splitting and resizing."""

import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from tora.data.datamodule import ShardDataModule
from tora.data.schema import ShardWriter, encode_sample
from tora.data.shards import count_samples, expand_shards, split_in_proportion
from tora.data.transforms import resize_center_crop

DATA_CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "data"


def write_shards(directory, prefix, sizes, num_frames=9, height=32, width=32, num_tracks=2, seed=0):
    """Shards holding ``sizes[i]`` random clips each; returns all sample keys in order."""
    rng = np.random.default_rng(seed)
    keys = []
    for shard, size in enumerate(sizes):
        with ShardWriter(str(directory), f"{prefix}-{shard:06d}", maxcount=size) as writer:
            for _ in range(size):
                key = f"{prefix}-{len(keys):04d}"
                coarse = rng.integers(0, 256, (num_frames, height // 8, width // 8, 3), np.uint8)
                frames = coarse.repeat(8, axis=1).repeat(8, axis=2)
                flow = rng.normal(size=(num_frames - 1, height, width, 2)).astype(np.float32)
                tracks = rng.uniform(0, width - 1, (num_tracks, num_frames, 2)).astype(np.float32)
                meta = {"fps": 8.0, "source": "test"}
                writer.write(encode_sample(key, frames, flow, tracks, f"caption {key}", meta))
                keys.append(key)
    return keys


def make_datamodule(train_shards, val_shards=None, **overrides):
    config = {
        "resolution": [32, 32],
        "num_frames": 9,
        "batch_size": 2,
        "num_workers": 0,
        "shuffle_buffer": 4,
        "shard_shuffle": 10,
        "max_tracks": 3,
        **overrides,
    }
    return ShardDataModule(str(train_shards), val_shards and str(val_shards), **config)


def test_batches_follow_the_contract(tmp_path):
    write_shards(tmp_path, "train", [3, 3], num_tracks=2)
    write_shards(tmp_path, "many", [2], num_tracks=5, seed=1)
    datamodule = make_datamodule(tmp_path / "{train,many}-*.tar", max_tracks=3)
    datamodule.setup("fit")
    loader = datamodule.train_dataloader()
    batches = list(loader)
    assert len(loader) == len(batches) == 4

    batch = batches[0]
    assert batch["video"].shape == (2, 3, 9, 32, 32) and batch["video"].dtype == torch.float32
    assert -1 <= batch["video"].min() and batch["video"].max() <= 1
    assert batch["flow"].shape == (2, 8, 32, 32, 2)
    assert batch["tracks"].shape == (2, 3, 9, 2) and batch["track_mask"].dtype == torch.bool
    assert batch["fps"].tolist() == [8.0, 8.0]
    assert len(batch["caption"]) == len(batch["key"]) == 2
    assert batch["caption"][0] == f"caption {batch['key'][0]}"
    assert batch["frame_start"].tolist() == [0, 0]  # 9-frame clips, 9-frame windows

    keys = [key for batch in batches for key in batch["key"]]
    assert len(set(keys)) == 8, "one epoch reads every sample once"
    for batch in batches:
        for index, key in enumerate(batch["key"]):
            expected = 3 if key.startswith("many") else 2
            mask = [True] * expected + [False] * (3 - expected)
            assert batch["track_mask"][index].tolist() == mask
            assert (batch["tracks"][index, expected:] == 0).all()
    assert datamodule.skipped == {
        "data/skipped_shards": 0,
        "data/skipped_bad_samples": 0,
        "data/skipped_tracks_outside_canvas": 0,
        "data/clips_over_max_tracks": 2,
    }


def test_bad_shards_and_samples_are_skipped_and_counted(tmp_path):
    good = write_shards(tmp_path, "val", [4, 4, 4])
    truncated = tmp_path / "val-000001-000000.tar"
    os.truncate(truncated, truncated.stat().st_size // 2)
    lost = good[4:8]
    with ShardWriter(str(tmp_path), "val-000003", maxcount=10) as writer:
        raw = encode_sample("val-bad", *_constant_clip(9, 32, 32, (1.0, 1.0)))
        writer.write({**raw, "mp4": b"not a video"})
        writer.write(encode_sample("val-good", *_constant_clip(9, 32, 32, (1.0, 1.0))))

    datamodule = make_datamodule(tmp_path / "train-*.tar", tmp_path / "val-*.tar", batch_size=1)
    datamodule.setup("validate")
    keys = [key for batch in datamodule.val_dataloader() for key in batch["key"]]
    arrived = [key for key in good if key not in lost] + ["val-good"]
    assert set(arrived) <= set(keys), "every sample of the good shards arrives"
    assert "val-bad" not in keys
    assert datamodule.skipped["data/skipped_shards"] >= 1
    assert datamodule.skipped["data/skipped_bad_samples"] >= 1

    # Counts made inside DataLoader worker processes reach the main process.
    datamodule = make_datamodule(
        tmp_path / "train-*.tar", tmp_path / "val-*.tar", batch_size=1, num_workers=2
    )
    datamodule.setup("validate")
    assert len(list(datamodule.val_dataloader())) == datamodule.num_batches("val")
    assert datamodule.skipped["data/skipped_shards"] >= 1
    assert datamodule.skipped["data/skipped_bad_samples"] >= 1


def test_shard_lists_are_expanded_counted_and_split(tmp_path):
    write_shards(tmp_path, "train", [3, 2])
    shards = expand_shards(f"{tmp_path}/train-{{000000,000001}}-*.tar", "data.train_shards")
    assert [Path(shard).name for shard in shards] == [
        "train-000000-000000.tar",
        "train-000001-000000.tar",
    ]
    assert [count_samples(shard) for shard in shards] == [3, 2]
    assert count_samples("pipe:cat a.tar") is None
    os.truncate(shards[0], 1536)  # the first member header and part of its data
    assert count_samples(shards[0]) <= 1
    with pytest.raises(FileNotFoundError, match="data.val_shards: shard .*/none.tar does not"):
        expand_shards(str(tmp_path / "none.tar"), "data.val_shards")
    with pytest.raises(FileNotFoundError, match="data.val_shards: .* matched no shards"):
        expand_shards(str(tmp_path / "none-*.tar"), "data.val_shards")
    assert split_in_proportion(5, [3, 1]) == [4, 1]  # 3.75 + 1.25: the larger remainder wins
    assert split_in_proportion(4, [1, 1, 1]) == [2, 1, 1]
    assert split_in_proportion(2, [0, 0]) == [1, 1]


def test_samples_with_track_points_off_the_canvas_are_skipped_and_counted(tmp_path):
    """Points more than half a pixel outside the video are refused, as ``tora.sample``
    refuses them, instead of being clamped into the motion maps and trained on."""
    clip = _constant_clip(9, 32, 32, (1.0, 1.0))
    outside = encode_sample("val-outside", *clip)
    tracks = clip[2].copy()
    tracks[0, 4] = (32.0, 5.0)  # x > W - 0.5
    outside["tracks.json"] = json.dumps({"canvas": [32, 32], "tracks": tracks.tolist()}).encode()
    with ShardWriter(str(tmp_path), "val", maxcount=10) as writer:
        writer.write(encode_sample("val-good-0", *clip))
        writer.write(outside)
        writer.write(encode_sample("val-good-1", *clip))
        writer.write({**encode_sample("val-bad", *clip), "mp4": b"not a video"})
    datamodule = make_datamodule(tmp_path / "val-*.tar", tmp_path / "val-*.tar", batch_size=1)
    datamodule.setup("validate")
    keys = [key for batch in datamodule.val_dataloader() for key in batch["key"]]
    # 4 samples counted, 2 good: the stream is read twice to make the 4 batches, and
    # stops before the undecodable sample comes round again.
    assert keys == ["val-good-0", "val-good-1"] * 2
    assert datamodule.skipped == {
        "data/skipped_shards": 0,
        "data/skipped_bad_samples": 1,
        "data/skipped_tracks_outside_canvas": 2,
        "data/clips_over_max_tracks": 0,
    }


def _constant_clip(num_frames, height, width, velocity):
    """A clip whose flow is a constant translation and whose tracks move with it."""
    frames = np.full((num_frames, height, width, 3), 128, np.uint8)
    flow = np.broadcast_to(np.float32(velocity), (num_frames - 1, height, width, 2)).copy()
    start = np.array([[10.0, 20.0], [0.7 * width, 0.4 * height]], np.float32)
    steps = np.arange(num_frames, dtype=np.float32)[:, None]
    tracks = start[:, None] + steps * np.asarray(velocity, np.float32)
    return frames, flow, tracks, "constant motion", {"fps": 8.0, "source": "test"}


def test_resizing_scales_flow_and_tracks(tmp_path):
    frames, flow, tracks, caption, meta = _constant_clip(9, 128, 128, (4.0, -2.0))
    with ShardWriter(str(tmp_path), "train") as writer:
        for index in range(2):
            writer.write(encode_sample(f"clip-{index}", frames, flow, tracks, caption, meta))
    datamodule = make_datamodule(tmp_path / "train-*.tar", resolution=[64, 64])
    batch = next(iter(datamodule.train_dataloader()))
    assert batch["video"].shape == (2, 3, 9, 64, 64)
    expected_flow = torch.tensor([2.0, -1.0]).expand(2, 8, 64, 64, 2)
    torch.testing.assert_close(batch["flow"], expected_flow)
    expected_tracks = (torch.from_numpy(tracks) + 0.5) / 2 - 0.5
    torch.testing.assert_close(batch["tracks"][:, :2], expected_tracks.expand(2, 2, 9, 2))


def test_resize_center_crop_non_square():
    video = torch.rand(3, 3, 64, 96)
    flow = torch.tensor([3.0, 1.0]).expand(2, 64, 96, 2).clone()
    tracks = torch.tensor([[[47.5, 31.5], [0.0, 0.0], [95.0, 63.0]]])
    video, flow, tracks = resize_center_crop(video, flow, tracks, (32, 32))
    assert video.shape == (3, 3, 32, 32) and flow.shape == (2, 32, 32, 2)
    torch.testing.assert_close(flow, torch.tensor([1.5, 0.5]).expand(2, 32, 32, 2))
    # 64x96 -> 32x48 (factor 0.5), centre crop drops 8 columns on the left.
    torch.testing.assert_close(
        tracks, torch.tensor([[[15.5, 15.5], [-8.25, -0.25], [39.25, 31.25]]])
    )


@pytest.mark.parametrize(
    "override, message",
    [
        ({"num_frames": 0}, "a positive frame count expected, got 0"),
        ({"resampled": True}, "epoch_length"),
    ],
)
def test_configuration_errors(override, message):
    with pytest.raises(ValueError, match=message):
        make_datamodule("unused-*.tar", **override)


@pytest.mark.parametrize("name", ["synthetic", "synthetic_tiny", "shards"])
def test_data_configs_compose_and_instantiate(name, tmp_path):
    write_shards(tmp_path / "synthetic", "train", [2], num_frames=17, height=64, width=64)
    write_shards(tmp_path / "synthetic", "val", [2], num_frames=17, height=64, width=64)
    overrides = [f"+paths.data_dir={tmp_path}", "seed=0"]
    if name == "shards":
        overrides += [
            f"train_shards='{tmp_path}/synthetic/train-{{000000..000000}}-000000.tar'",
            "resolution=[64,64]",
            "batch_size=2",
            "num_workers=0",
            "pin_memory=false",
        ]
    with initialize_config_dir(config_dir=str(DATA_CONFIGS), version_base="1.3"):
        config = compose(config_name=name, overrides=overrides)
    data_config = OmegaConf.to_container(config, resolve=True)
    del data_config["paths"]
    assert "frame_stride" not in data_config, "consecutive frames only: no stride setting"
    datamodule = instantiate(data_config)
    assert isinstance(datamodule, ShardDataModule)
    assert datamodule.num_workers == (2 if name == "synthetic" else 0)
    if name != "synthetic":
        batch = next(iter(datamodule.train_dataloader()))
        assert batch["video"].shape == (2, 3, 17, 64, 64)
        assert batch["tracks"].shape[1] == datamodule.max_tracks


def _ddp_worker(rank, world_size, port, shard_dir, result_dir):
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size
    )
    # Fork DataLoader workers as under Lightning's DDP launcher (a process made by
    # mp.spawn would spawn them too, re-importing everything: ~10 s each here).
    mp.set_start_method("fork", force=True)
    results = {}
    setups = {
        "split_shards": {"train_shards": f"{shard_dir}/train-*.tar"},
        "split_samples": {"train_shards": f"{shard_dir}/single-*.tar"},
        "resampled": {
            "train_shards": f"{shard_dir}/train-*.tar",
            "resampled": True,
            "epoch_length": 6,
        },
    }
    for name, overrides in setups.items():
        datamodule = make_datamodule(num_workers=1, **overrides)
        datamodule.setup("fit")
        results[name] = [batch["key"] for batch in datamodule.train_dataloader()]
    Path(result_dir, f"rank{rank}.json").write_text(json.dumps(results))
    dist.destroy_process_group()


def test_ddp_ranks_read_disjoint_data_and_equal_batch_counts(tmp_path):
    write_shards(tmp_path, "train", [3, 3, 3, 3, 2])  # rank 0: 8 samples, rank 1: 6
    write_shards(tmp_path, "single", [9], seed=1)  # fewer shards than ranks
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mp.spawn(_ddp_worker, args=(2, port, str(tmp_path), str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(2)]
    # floor(14 samples / 2 ranks / batch 2) = 3 and floor(9 / 2 / 2) = 2 batches on every rank.
    for name, batches in [("split_shards", 3), ("split_samples", 2), ("resampled", 3)]:
        assert [len(rank[name]) for rank in ranks] == [batches, batches], name
        assert all(len(batch) == 2 for rank in ranks for batch in rank[name])
    for name in ("split_shards", "split_samples"):
        keys = [{key for batch in rank[name] for key in batch} for rank in ranks]
        assert not keys[0] & keys[1], f"{name}: ranks saw the same samples {keys[0] & keys[1]}"
        assert len(keys[0]) == len(keys[1]) == 2 * len(ranks[0][name])


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("resampled", [False, True])
def test_epochs_are_seeded_and_a_loader_resumes_mid_epoch(tmp_path, workers, resampled):
    """Epoch e of a seed is the same batches in every run; a loader restored from the
    state saved after k batches continues with batch k + 1 of that epoch."""
    write_shards(tmp_path, "train", [6, 6], num_frames=17)
    options = {"num_workers": workers, "seed": 5, "resampled": resampled, "epoch_length": 12}

    def keys_and_starts(batch):
        return list(zip(batch["key"], batch["frame_start"].tolist(), strict=True))

    def epochs(loader, count):
        return [[keys_and_starts(batch) for batch in loader] for _ in range(count)]

    straight = epochs(make_datamodule(tmp_path / "train-*.tar", **options).train_dataloader(), 2)
    assert len(straight[0]) == 6 and straight[0] != straight[1]
    assert epochs(make_datamodule(tmp_path / "train-*.tar", **options).train_dataloader(), 2) == (
        straight
    )
    other_seed = make_datamodule(tmp_path / "train-*.tar", **{**options, "seed": 6})
    assert epochs(other_seed.train_dataloader(), 1)[0] != straight[0]

    loader = make_datamodule(tmp_path / "train-*.tar", **options).train_dataloader()
    batches = iter(loader)
    for _ in range(4):
        next(batches)
    state = loader.state_dict()
    assert state == {"seed": 5, "epoch": 0, "batches_read": 4}
    resumed = make_datamodule(tmp_path / "train-*.tar", **{**options, "seed": None})
    loader = resumed.train_dataloader()
    loader.load_state_dict(state)
    assert [keys_and_starts(batch) for batch in loader] == straight[0][4:]
    assert epochs(loader, 1)[0] == straight[1]


def test_training_windows_of_longer_clips_report_their_start(tmp_path):
    """Clips longer than num_frames give random windows in training, centred ones in
    validation; ``frame_start`` says which (with the key it identifies the clip)."""
    write_shards(tmp_path, "train", [8], num_frames=17)
    write_shards(tmp_path, "val", [4], num_frames=17)
    datamodule = make_datamodule(tmp_path / "train-*.tar", tmp_path / "val-*.tar")
    datamodule.setup("fit")
    starts = [int(s) for batch in datamodule.train_dataloader() for s in batch["frame_start"]]
    assert len(starts) == 8 and all(0 <= s <= 8 for s in starts) and len(set(starts)) > 1
    val = [int(s) for batch in datamodule.val_dataloader() for s in batch["frame_start"]]
    assert val == [4] * 4
