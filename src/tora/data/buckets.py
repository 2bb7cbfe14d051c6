"""Aspect-ratio buckets: clips of different shapes, one size per aspect ratio (OpenSora
v1.2's buckets, ``opensora/datasets/aspect.py``), each batch from one bucket.

Video preparation (``clips.buckets``) and the DataModule (``data.buckets``) place a
video with the same :func:`nearest_bucket`, so a clip prepared into a bucket is
trained at that bucket's size with no resize.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any


def nearest_bucket(height: int, width: int, buckets: Sequence[Sequence[int]]) -> tuple[int, int]:
    """The ``(H, W)`` of the bucket whose aspect ratio is nearest ``width / height``
    (distance of log aspect ratios; the first of equals)."""
    aspect = math.log(width / height)
    best = min(buckets, key=lambda bucket: abs(math.log(bucket[1] / bucket[0]) - aspect))
    return int(best[0]), int(best[1])


def batches_by_size(
    samples: Iterable[dict[str, Any]],
    batch_size: int,
    collate: Callable[[list[dict[str, Any]]], dict[str, Any]],
) -> Iterator[dict[str, Any]]:
    """Full batches of samples of one ``video`` size ``[C, T, H, W]``, each emitted as
    soon as its size has ``batch_size`` samples; a partial batch at the end is dropped."""
    waiting: dict[tuple[int, ...], list[dict[str, Any]]] = {}
    for sample in samples:
        group = waiting.setdefault(tuple(sample["video"].shape), [])
        group.append(sample)
        if len(group) == batch_size:
            yield collate(group)
            group.clear()
