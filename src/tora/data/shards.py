"""Shard lists: expanding patterns, counting samples, splitting over ranks and workers."""

from __future__ import annotations

import glob
import logging
import os
import tarfile
from collections.abc import Iterator, Sequence
from itertools import islice
from typing import Any

import braceexpand
from webdataset.tariterators import base_plus_ext

log = logging.getLogger(__name__)


def expand_shards(pattern: str | Sequence[str], name: str) -> list[str]:
    """Brace patterns, globs or lists -> sorted shard paths (URLs are kept as they are)."""
    patterns = [pattern] if isinstance(pattern, str) else list(pattern)
    shards: list[str] = []
    for item in patterns:
        for path in braceexpand.braceexpand(str(item)):
            if "://" in path or path.startswith("pipe:"):
                shards.append(path)
            elif glob.has_magic(path):
                shards.extend(sorted(glob.glob(path)))
            elif os.path.exists(path):
                shards.append(path)
            else:
                raise FileNotFoundError(f"{name}: shard {path} does not exist")
    if not shards:
        raise FileNotFoundError(f"{name}: {pattern!r} matched no shards")
    return shards


def count_samples(shard: str) -> int | None:
    """Samples in a local tar shard, from its headers; None for a remote URL.

    A shard that cannot be read to the end counts the samples before the damage.
    """
    if "://" in shard or shard.startswith("pipe:"):
        return None
    keys = set()
    try:
        with tarfile.open(shard, "r:") as archive:
            for member in archive:
                prefix, _ = base_plus_ext(member.name)
                if member.isreg() and prefix is not None and not prefix.startswith("__"):
                    keys.add(prefix)
    except (tarfile.TarError, OSError) as error:
        log.warning("shard %s is damaged after %d samples: %r", shard, len(keys), error)
    return len(keys)


def split_by_rank(urls: Iterator[Any], rank: int, world_size: int) -> Iterator[Any]:
    """WebDataset node splitter for a rank fixed in the main process.

    ``wds.split_by_node`` asks torch.distributed for the rank inside the
    DataLoader worker, which answers rank 0 in workers that were spawned
    rather than forked (unless ``RANK`` is set in the environment).
    """
    yield from islice(urls, rank, None, world_size)


def split_in_proportion(total: int, weights: Sequence[int]) -> list[int]:
    """Non-negative integers summing to ``total`` in proportion to ``weights``
    (largest remainder; equal weights if all are zero)."""
    if sum(weights) == 0:
        weights = [1] * len(weights)
    exact = [total * weight / sum(weights) for weight in weights]
    shares = [int(value) for value in exact]
    by_remainder = sorted(range(len(shares)), key=lambda i: exact[i] - shares[i], reverse=True)
    for index in by_remainder[: total - sum(shares)]:
        shares[index] += 1
    return shares
