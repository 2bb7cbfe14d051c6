"""Aspect-ratio buckets: preparation and the DataModule place a video alike, and every
batch holds clips of one bucket."""

from __future__ import annotations

import pytest

from tora.data.buckets import nearest_bucket
from tora.data.datamodule import ShardDataModule
from tora.data.prepare import choose_bucket
from tora.data.synthetic import GeneratorConfig, WorldConfig, generate_split

BUCKETS_240P = [[240, 432], [432, 240], [320, 320], [272, 368], [368, 272]]


@pytest.mark.parametrize(
    "height, width, bucket",
    [
        (1080, 1920, (240, 432)),
        (1920, 1080, (432, 240)),
        (480, 480, (320, 320)),
        (480, 640, (272, 368)),
        (600, 800, (272, 368)),
        (640, 480, (368, 272)),
        (272, 368, (272, 368)),
    ],
)
def test_preparation_and_training_pick_the_same_bucket(height, width, bucket):
    assert nearest_bucket(height, width, BUCKETS_240P) == bucket
    assert choose_bucket(height, width, [256, 256], BUCKETS_240P) == bucket


def test_each_batch_is_one_bucket(tmp_path):
    shards = []
    for name, (height, width) in {"square": (64, 64), "wide": (48, 96)}.items():
        world = WorldConfig(height=height, width=width)
        config = GeneratorConfig(world=world, seed=1, num_train=4, num_val=0, shard_maxcount=4)
        shards += generate_split(config, "train", tmp_path / name)
    data = ShardDataModule(
        [str(s) for s in shards],
        None,
        resolution=[32, 32],
        num_frames=9,
        batch_size=2,
        num_workers=0,
        buckets=[[32, 32], [32, 64]],
        seed=0,
    )
    sizes = [tuple(batch["video"].shape[-2:]) for batch in data.train_dataloader()]
    assert len(sizes) == 4  # every sample of the epoch, in full batches
    assert set(sizes) == {(32, 32), (32, 64)}


def test_buckets_must_be_sizes():
    with pytest.raises(ValueError, match=r"data.buckets: a list of \[H, W\]"):
        ShardDataModule("x.tar", None, [32, 32], 9, buckets=[[32]])
