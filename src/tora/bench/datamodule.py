"""How fast the configured DataModule delivers training clips."""

from __future__ import annotations

import time
from itertools import islice
from typing import Any

import hydra
from omegaconf import DictConfig


def datamodule_throughput(data_cfg: DictConfig, num_batches: int) -> dict[str, Any]:
    """Clips/s of the configured DataModule's training loader over ``num_batches``
    batches; the first batch (worker start-up, shuffle buffer fill) is not timed."""
    datamodule = hydra.utils.instantiate(data_cfg)
    try:
        loader = datamodule.train_dataloader()
    except FileNotFoundError as error:
        return {"status": "no shards (run make data)", "error": str(error)}
    batches = iter(loader)
    next(batches)
    clips = 0
    timed = 0
    start = time.perf_counter()
    for batch in islice(batches, num_batches):
        clips += len(batch["caption"])
        timed += 1
    elapsed = time.perf_counter() - start
    del batches, loader
    return {
        "status": "ok",
        "clips_per_s": clips / elapsed if timed else None,
        "batches": timed,
        "batch_size": datamodule.batch_size,
        "num_frames": datamodule.num_frames,
        "resolution": list(datamodule.resolution),
        "num_workers": datamodule.num_workers,
    }
