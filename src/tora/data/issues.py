"""Counts of skipped shards and samples, per reason, shared between a DataLoader's workers."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch.utils.data import get_worker_info

from tora.data.schema import TracksOutsideCanvasError

log = logging.getLogger(__name__)


class DataIssueCounter:
    """Counts of skipped shards and samples, shared between a DataLoader's workers.

    ``counts[row, field]`` lives in shared memory; row 0 is the main process
    (``num_workers=0``), row ``i + 1`` DataLoader worker ``i``, so no two
    processes ever write the same cell. Fields: ``skipped_shards`` (the rest of
    an unreadable or truncated shard), ``skipped_bad_samples`` (a sample that
    does not decode or follow the schema), ``skipped_tracks_outside_canvas`` (a
    track point more than half a pixel outside the video) and
    ``clips_over_max_tracks`` (kept, with their first ``max_tracks`` tracks).
    """

    FIELDS = (
        "skipped_shards",
        "skipped_bad_samples",
        "skipped_tracks_outside_canvas",
        "clips_over_max_tracks",
    )

    def __init__(self, num_workers: int, shards: Sequence[str]):
        self.counts = torch.zeros(num_workers + 1, len(self.FIELDS), dtype=torch.int64)
        self.counts.share_memory_()
        self.shards = frozenset(shards)

    def add(self, field: str, count: int = 1) -> None:
        worker = get_worker_info()
        self.counts[0 if worker is None else worker.id + 1, self.FIELDS.index(field)] += count

    def totals(self) -> dict[str, int]:
        return dict(zip(self.FIELDS, self.counts.sum(dim=0).tolist(), strict=True))

    def shard_error(self, error: Exception) -> bool:
        """``WebDataset(handler=...)``: log, count and continue after a tar-reading error.

        webdataset appends the shard URL to errors that end a shard (open failure,
        truncated or corrupt tar); a failed member read inside a shard names the
        shard only in its message and is always followed by such an error, so it
        is logged but not counted twice. Other errors (e.g. a duplicate member
        name) lose one sample.
        """
        named = [*error.args[-1:], getattr(error, "filename", None)]
        shard = next(
            (name for name in named if isinstance(name, str) and name in self.shards), None
        )
        if shard is not None:
            log.warning("skipping the rest of shard %s: %r", shard, error)
            self.add("skipped_shards")
        elif any(name in str(error) for name in self.shards):
            log.warning("shard read error: %r", error)
        else:
            log.warning("skipping a sample: %r", error)
            self.add("skipped_bad_samples")
        return True

    def sample_error(self, error: Exception) -> bool:
        """``.map(..., handler=...)``: log, count (by reason) and continue after a bad sample."""
        log.warning("skipping a sample: %s", error)
        if isinstance(error, TracksOutsideCanvasError):
            self.add("skipped_tracks_outside_canvas")
        else:
            self.add("skipped_bad_samples")
        return True
