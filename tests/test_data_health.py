"""Skipped training data is visible: counts per reason in TensorBoard, the run log and
the run summary, from a real training run on a partly corrupted shard set."""

from __future__ import annotations

import io
import json
import logging
import shutil
import tarfile
from pathlib import Path

from conftest import compose_train
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tora.train import train

NO_PREREQUISITES = [
    "model.vae_checkpoint=null",
    "model.init_checkpoint=null",
    "model.motion_encoder.checkpoint=null",
]


def rewrite_members(shard: Path, changes: dict[str, bytes]) -> None:
    """Replace the tar members named in ``changes`` (``"<key>.<suffix>"``) in place."""
    with tarfile.open(shard) as archive:
        members = [(member, archive.extractfile(member).read()) for member in archive]
    with tarfile.open(shard, "w") as archive:
        for member, data in members:
            data = changes.get(member.name, data)
            member.size = len(data)
            archive.addfile(member, io.BytesIO(data))


def corrupted_copy(shards: Path, out: Path) -> Path:
    """The synthetic shards with, in the first train shard, one undecodable sample and
    one whose first track leaves the 64x64 canvas."""
    shutil.copytree(shards, out)
    first = out / "train-000000.tar"
    with tarfile.open(first) as archive:
        names = archive.getnames()
        keys = sorted({name.split(".")[0] for name in names})
        tracks_name = f"{keys[1]}.tracks.json"
        document = json.loads(archive.extractfile(tracks_name).read())
    document["tracks"][0][3] = [64.0, 10.0]  # x > W - 0.5
    rewrite_members(
        first,
        {f"{keys[0]}.mp4": b"not a video", tracks_name: json.dumps(document).encode()},
    )
    return out


def test_skipped_samples_reach_tensorboard_run_log_and_summary(
    tmp_path, synthetic_shards, caplog, capsys
):
    shards = corrupted_copy(synthetic_shards, tmp_path / "shards")
    cfg = compose_train(
        [
            "experiment=stage1_flow",
            *NO_PREREQUISITES,
            "export_checkpoint=null",
            "trainer.max_steps=2",
            "trainer.val_check_interval=2",
            "trainer.limit_val_batches=0",
            "callbacks.data_health.every_n_steps=1",
            "callbacks.progress_bar=null",
            # Shards and samples in order: the two bad samples come first, once.
            "data.shuffle_buffer=0",
            "data.shard_shuffle=0",
        ],
        tmp_path,
        shards,
    )
    with caplog.at_level(logging.WARNING, logger="tora.training.data_health"):
        train(cfg)

    event_files = list((tmp_path / "logs").rglob("events.out.tfevents.*"))
    accumulator = EventAccumulator(str(event_files[0].parent))
    accumulator.Reload()
    logged = {
        tag: [(event.step, event.value) for event in accumulator.Scalars(tag)]
        for tag in accumulator.Tags()["scalars"]
        if tag.startswith("data/")
    }
    # The first batch needs both bad samples skipped; nothing else is ever skipped.
    assert logged["data/skipped_bad_samples"] == [(1, 1), (2, 1)]
    assert logged["data/skipped_tracks_outside_canvas"] == [(1, 1), (2, 1)]
    assert logged["data/skipped_shards"] == [(1, 0), (2, 0)]
    assert logged["data/clips_over_max_tracks"] == [(1, 0), (2, 0)]

    warnings = [r.getMessage() for r in caplog.records if r.name == "tora.training.data_health"]
    assert warnings == [
        "data issues by step 1, all ranks: "
        "data/skipped_bad_samples=1, data/skipped_tracks_outside_canvas=1"
    ]
    summary = capsys.readouterr().out
    assert "data/skipped_bad_samples" in summary
    assert "data/skipped_tracks_outside_canvas" in summary
