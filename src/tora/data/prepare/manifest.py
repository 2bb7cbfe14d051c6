"""``manifest.jsonl``: one line per rejected scene, clip candidate and video, appended."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tora.data.prepare.video import VideoJob

MANIFEST = "manifest.jsonl"


class Manifest:
    """``manifest.jsonl``: appended one line per record, flushed per video."""

    def __init__(self, path: Path):
        self.path = path
        self.latest: dict[str, dict[str, Any]] = {}
        """The latest ``done``/``failed`` line of each video."""
        self.bad_lines = 0
        if path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    self.bad_lines += 1  # a line cut short by a crash
                    continue
                if record.get("kind") == "video" and record.get("status") in ("done", "failed"):
                    self.latest[record["video"]] = record

    def append(self, records: list[dict[str, Any]]) -> None:
        with self.path.open("a", encoding="utf-8") as file:
            file.writelines(json.dumps(record) + "\n" for record in records)
        for record in records:
            if record.get("kind") == "video" and record.get("status") in ("done", "failed"):
                self.latest[record["video"]] = record

    def is_done(self, job: VideoJob, out: Path) -> bool:
        record = self.latest.get(job.relative)
        return (
            record is not None
            and record["status"] == "done"
            and (record.get("size"), record.get("mtime_ns")) == (job.size, job.mtime_ns)
            and all((out / shard).is_file() for shard in record.get("shards", []))
        )
