"""``summary.json``: counts, rates and stage times of one preparation run, and its table."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from rich.table import Table

from tora.data.prepare.manifest import Manifest
from tora.data.prepare.video import VideoResult

SUMMARY = "summary.json"
STAGES = (
    "decode",
    "scenes",
    "resize",
    "quality",
    "flow",
    "scores",
    "tracks",
    "caption",
    "encode",
    "write",
)
"""Timed stages, in pipeline order (``summary.json`` ``stage_seconds``)."""


@dataclass
class RunSummary:
    src: str
    out: str
    videos_found: int = 0
    videos_done: int = 0
    videos_skipped_done: int = 0
    videos_failed: int = 0
    settings_changed: int = 0
    scenes: int = 0
    scenes_too_short: int = 0
    clip_candidates: int = 0
    clips_kept: int = 0
    clips_rejected: dict[str, int] = field(default_factory=dict)
    video_hours: float = 0.0
    shards_written: int = 0
    wall_seconds: float = 0.0
    clips_per_second: float = 0.0
    candidates_per_second: float = 0.0
    video_seconds_per_second: float = 0.0
    worker_seconds: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=dict)
    failed: list[dict[str, str]] = field(default_factory=list)
    out_totals: dict[str, int] = field(default_factory=dict)
    """Over every run into ``out``: videos done, clips kept, shards."""

    def add(self, result: VideoResult) -> None:
        video_line = result.records[-1]
        if result.status == "failed":
            self.videos_failed += 1
            self.failed.append({"video": result.job.relative, "error": video_line["error"]})
        else:
            self.videos_done += 1
            self.scenes += video_line["scenes"]
            self.video_hours += video_line["duration"] / 3600
            self.shards_written += len(video_line["shards"])
        rejected = Counter(self.clips_rejected)
        for record in result.records:
            if record["kind"] == "scene":
                self.scenes_too_short += 1
            elif record["kind"] == "clip":
                self.clip_candidates += 1
                if record["status"] == "kept":
                    self.clips_kept += 1
                else:
                    rejected[record["reason"]] += 1
        self.clips_rejected = dict(sorted(rejected.items()))
        self.worker_seconds += result.seconds
        for stage, seconds in result.stage_seconds.items():
            self.stage_seconds[stage] = self.stage_seconds.get(stage, 0.0) + seconds

    def finish(self, wall_seconds: float, manifest: Manifest) -> None:
        self.wall_seconds = round(wall_seconds, 3)
        per_second = 1.0 / max(wall_seconds, 1e-9)
        self.clips_per_second = round(self.clips_kept * per_second, 3)
        self.candidates_per_second = round(self.clip_candidates * per_second, 3)
        self.video_seconds_per_second = round(self.video_hours * 3600 * per_second, 3)
        self.video_hours = round(self.video_hours, 5)
        self.worker_seconds = round(self.worker_seconds, 3)
        self.stage_seconds = {
            stage: round(self.stage_seconds[stage], 3)
            for stage in STAGES
            if stage in self.stage_seconds
        }
        done = [record for record in manifest.latest.values() if record["status"] == "done"]
        self.out_totals = {
            "videos_done": len(done),
            "clips_kept": sum(record["clips_kept"] for record in done),
            "shards": sum(len(record["shards"]) for record in done),
        }


def summary_table(summary: RunSummary) -> Table:
    """The run summary as a rich table."""
    table = Table(title=f"{summary.src} -> {summary.out}", show_header=False)
    table.add_column("", style="bold")
    table.add_column("", justify="right")
    rows = [
        ("videos found", summary.videos_found),
        ("videos prepared", summary.videos_done),
        ("videos skipped (done before)", summary.videos_skipped_done),
        ("videos failed", summary.videos_failed),
        ("hours of video", f"{summary.video_hours:.4f}"),
        ("scenes", summary.scenes),
        ("scenes too short", summary.scenes_too_short),
        ("clip candidates", summary.clip_candidates),
        ("clips kept", summary.clips_kept),
        *((f"rejected: {reason}", count) for reason, count in summary.clips_rejected.items()),
        ("shards written", summary.shards_written),
        ("wall seconds", f"{summary.wall_seconds:.1f}"),
        ("clips kept / s", f"{summary.clips_per_second:.2f}"),
        ("clip candidates / s", f"{summary.candidates_per_second:.2f}"),
        *(
            (f"seconds in {stage} (all workers)", f"{seconds:.2f}")
            for stage, seconds in summary.stage_seconds.items()
        ),
        ("in out, all runs: videos / clips / shards",
         " / ".join(str(v) for v in summary.out_totals.values())),
    ]  # fmt: skip
    for name, value in rows:
        table.add_row(name, str(value))
    for failure in summary.failed[:10]:
        table.add_row(f"failed: {failure['video']}", failure["error"][:80], style="red")
    return table
