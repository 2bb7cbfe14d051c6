"""``python -m tora.evaluate ckpt=PATH``: generate for a held-out shard set with
its captions and tracks, measure TrajError / FVD / CLIPSIM against the no-control
baseline (same weights, prompts and seeds, no motion condition), and write
``metrics.json``, ``report.md`` with frame strips, and TensorBoard scalars/images.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
import warnings
from pathlib import Path

import cv2
import hydra
import numpy as np
import torch
from omegaconf import DictConfig
from rich.console import Console
from rich.progress import track
from rich.table import Table
from torch.utils.tensorboard import SummaryWriter

from tora.data.synthetic import SHAPES
from tora.inference import GenerationConfig, GenerationRequest
from tora.metrics import (
    CoTrackerTracker,
    LucasKanadeTracker,
    MaskCentroidTracker,
    MetricUnavailable,
    TrajError,
    build_clipsim,
    build_fvd,
)
from tora.metrics.shapes import shape_accuracy
from tora.models.video_vae import VideoVAE
from tora.motion import draw_tracks
from tora.sample import load_pipeline
from tora.utils.config import CONFIG_PATH
from tora.utils.video import as_uint8_frames

log = logging.getLogger(__name__)

TRACKERS = ("lucas_kanade", "mask_centroid", "cotracker")


def held_out_clips(cfg: DictConfig) -> list[dict]:
    """The first ``num_samples`` validation clips: video uint8, caption, tracks."""
    datamodule = hydra.utils.instantiate(cfg.data, _convert_="all")
    datamodule.setup("validate")
    clips = []
    for batch in datamodule.val_dataloader():
        for i in range(len(batch["caption"])):
            tracks = batch["tracks"][i][batch["track_mask"][i]][: cfg.tracks_per_clip]
            if len(tracks) == 0:
                continue
            video = as_uint8_frames(batch["video"][i])
            clips.append(
                {
                    "key": batch["key"][i],
                    "caption": batch["caption"][i],
                    "tracks": tracks,
                    "video": video,
                }
            )
            if len(clips) == cfg.num_samples:
                return clips
    if not clips:
        raise ValueError(f"data.val_shards={cfg.data.val_shards}: no validation clip with tracks")
    log.warning(
        "only %d held-out clips with tracks (num_samples=%d asked)", len(clips), cfg.num_samples
    )
    return clips


def tracker_names(cfg: DictConfig) -> list[str]:
    """The headline tracker, then the extra ones (each reported beside it)."""
    names = [cfg.tracker, *[t for t in cfg.get("extra_trackers", []) if t != cfg.tracker]]
    unknown = [name for name in names if name not in TRACKERS]
    if unknown:
        raise ValueError(f"tracker {unknown[0]!r}: one of {TRACKERS} expected")
    return names


def make_tracker(name: str, cfg: DictConfig, clip: dict):
    if name == "lucas_kanade":
        return LucasKanadeTracker(**cfg.get("lucas_kanade", {}))
    if name == "cotracker":
        return CoTrackerTracker(cfg.cotracker_path)
    if name == "mask_centroid":
        # Synthetic world: an object is its colour, read off the real first frame
        # at the requested start point.
        start = clip["tracks"][:, 0].round().long().numpy()
        colors = clip["video"][0][start[:, 1], start[:, 0]]
        return MaskCentroidTracker(colors)
    raise ValueError(f"tracker {name!r}: one of {TRACKERS} expected")


def fmt(value: float | dict, digits: int) -> str:
    """A metric value, or "unavailable" for a metric whose model is not configured."""
    return f"{value:.{digits}f}" if isinstance(value, float) else "unavailable"


def frame_strip(video: np.ndarray, tracks: torch.Tensor | None, num_frames: int) -> np.ndarray:
    """``num_frames`` evenly spaced frames side by side, tracks drawn when given."""
    frames = draw_tracks(video, tracks) if tracks is not None else video
    index = np.linspace(0, len(frames) - 1, num_frames).round().astype(int)
    return np.concatenate(list(frames[index]), axis=1)


def evaluate(cfg: DictConfig) -> dict:
    out_dir = Path(cfg.out_dir)
    (out_dir / "frames").mkdir(parents=True, exist_ok=True)
    settings = GenerationConfig.from_mapping(cfg)
    trackers = tracker_names(cfg)  # a bad name fails here, not after the sampling
    pipeline = load_pipeline(cfg)
    if not pipeline.uses_motion:
        raise ValueError(f"checkpoint {cfg.ckpt}: a Tora checkpoint with motion guidance expected")
    clips = held_out_clips(cfg)
    num_frames, height, width = clips[0]["video"].shape[:3]
    variants = {"tora": True} | ({"no_control": False} if cfg.baseline else {})
    generated: dict[str, list[np.ndarray]] = {name: [] for name in variants}
    seconds = dict.fromkeys(variants, 0.0)
    for start in track(range(0, len(clips), cfg.batch_size), description="generating"):
        chunk = clips[start : start + cfg.batch_size]
        requests = [GenerationRequest(c["caption"], c["tracks"]) for c in chunk]
        for name, use_motion in variants.items():
            begin = time.perf_counter()
            batch_videos = pipeline.generate(
                requests,
                num_frames,
                height,
                width,
                dataclasses.replace(settings, seed=settings.seed + start),
                use_motion=use_motion,
                progress=False,
            )
            seconds[name] += time.perf_counter() - begin
            generated[name].extend(batch_videos)

    reference = tuple(cfg.reference_size) if cfg.get("reference_size") else None
    fvd_metric = build_fvd(cfg.metrics.i3d_path)
    clip_metric = build_clipsim(cfg.metrics.clip_path)
    real = np.stack([c["video"] for c in clips])
    metrics: dict = {
        "num_clips": len(clips),
        "tracker": cfg.tracker,
        "steps": cfg.steps,
        "clips_by_num_tracks": {
            str(n): sum(len(c["tracks"]) == n for c in clips)
            for n in sorted({len(c["tracks"]) for c in clips})
        },
        "variants": {},
    }
    for name, videos in generated.items():
        by_tracker = {
            tracker: trajectory_errors(cfg, tracker, clips, videos, reference)
            for tracker in trackers
        }
        row = {
            **by_tracker[cfg.tracker],
            "by_tracker": by_tracker,
            "shape_accuracy": shape_accuracy(clips, videos)["accuracy"],
            # Wall time of generation (sampling + VAE decode), batch_size clips at a time.
            "seconds_per_clip": round(seconds[name] / len(videos), 3),
        }
        row["fvd"] = (
            float(fvd_metric(real, np.stack(videos)))
            if not isinstance(fvd_metric, MetricUnavailable)
            else fvd_metric.as_dict()
        )
        row["clipsim"] = (
            float(clip_metric(list(videos), [c["caption"] for c in clips]))
            if not isinstance(clip_metric, MetricUnavailable)
            else clip_metric.as_dict()
        )
        metrics["variants"][name] = row
    # Ground truth through the same trackers: the floor each tracker itself sets.
    floors = {
        tracker: trajectory_errors(cfg, tracker, clips, [c["video"] for c in clips], reference)
        for tracker in trackers
    }
    metrics["tracker_floor_on_real_clips"] = floors[cfg.tracker]["trajerror"]
    metrics["tracker_floors"] = {t: floor["trajerror"] for t, floor in floors.items()}
    metrics["shape_accuracy_real"] = shape_accuracy(clips, [c["video"] for c in clips])["accuracy"]
    # The real clips through the model's VAE: the floor any model generating through it meets.
    rebuilt = reconstructions(pipeline.components.vae, clips, cfg.batch_size, pipeline.device)
    vae_floor = vae_floors(cfg, clips, rebuilt, trackers, reference)
    metrics["vae_psnr"] = vae_floor["psnr"]
    metrics["vae_object_psnr"] = vae_floor["object_psnr"]
    metrics["vae_shape_accuracy"] = vae_floor["shape_accuracy"]
    metrics["tracker_floors_vae"] = vae_floor["trackers"]
    if "no_control" in metrics["variants"]:
        metrics["control"] = control_summary(metrics, cfg.tracker)

    write_report(cfg, out_dir, clips, {"vae": rebuilt} | generated, metrics)
    log_tensorboard(cfg, clips, generated, metrics)
    print_metrics(metrics)
    return metrics


@torch.no_grad()
def reconstructions(
    vae: VideoVAE, clips: list[dict], batch_size: int, device: torch.device | str = "cpu"
) -> list[np.ndarray]:
    """``decode(encode(clip))`` of every real clip through ``vae``, uint8."""
    rebuilt = []
    for start in range(0, len(clips), batch_size):
        frames = np.stack([c["video"] for c in clips[start : start + batch_size]])
        video = torch.from_numpy(frames).permute(0, 4, 1, 2, 3).float() / 127.5 - 1
        decoded = vae.decode_latents(vae.encode_latents(video.to(device)), frames.shape[1])
        rebuilt += [as_uint8_frames(clip) for clip in decoded]
    return rebuilt


def vae_floors(cfg, clips, rebuilt, trackers: list[str], reference) -> dict:
    """What the reconstructions ``rebuilt`` of ``clips`` leave to any model generating
    through their VAE: PSNR, object PSNR and each tracker's TrajError."""
    return {
        "psnr": psnr(np.stack([c["video"] for c in clips]), np.stack(rebuilt)),
        "object_psnr": object_psnr(clips, rebuilt, cfg.object_box),
        "shape_accuracy": shape_accuracy(clips, rebuilt)["accuracy"],
        "trackers": {
            tracker: trajectory_errors(cfg, tracker, clips, rebuilt, reference)["trajerror"]
            for tracker in trackers
        },
    }


def psnr(real: np.ndarray, videos: np.ndarray) -> float:
    """PSNR in dB of uint8 videos against the real ones, over all pixels."""
    return psnr_of_mse(float(np.mean((real.astype(np.float64) - videos.astype(np.float64)) ** 2)))


def psnr_of_mse(mse: float) -> float:
    """PSNR in dB of a mean squared error of uint8 pixels (floored at 1e-10)."""
    return float(10 * np.log10(255.0**2 / max(mse, 1e-10)))


def object_psnr(clips: list[dict], videos: list[np.ndarray], box: float) -> float:
    """PSNR in dB over the pixels within squares ``box`` of the short side wide, centred
    on every track point of each frame: the objects, which the background outweighs in
    the whole frame's PSNR."""
    squared_error, count = 0.0, 0
    for clip, video in zip(clips, videos, strict=True):
        frames, height, width = video.shape[:3]
        half = box * min(height, width) / 2
        points = clip["tracks"].numpy()[:, :frames]  # [N, T, 2] (x, y) pixel centres
        y = np.arange(height)[None, None, :, None]
        x = np.arange(width)[None, None, None, :]
        inside = (np.abs(y - points[..., 1, None, None]) < half) & (
            np.abs(x - points[..., 0, None, None]) < half
        )
        mask = inside.any(axis=0)  # [T, H, W]
        difference = clip["video"][mask].astype(np.float64) - video[mask].astype(np.float64)
        squared_error += float(np.sum(difference**2))
        count += difference.size
    return psnr_of_mse(squared_error / max(count, 1))


def control_summary(metrics: dict, tracker: str) -> dict:
    """The paper-style ratio (no control / Tora) and the share of the reachable gap
    closed, (no control - Tora) / (no control - the VAE floor), for ``tracker``."""
    ours = metrics["variants"]["tora"]["by_tracker"][tracker]["trajerror"]
    none = metrics["variants"]["no_control"]["by_tracker"][tracker]["trajerror"]
    floor = metrics["tracker_floors_vae"][tracker]
    return {
        "ratio": none / ours if ours > 0 else float("inf"),
        "gap_closed": (none - ours) / (none - floor) if none > floor else float("nan"),
    }


def trajectory_errors(cfg, tracker: str, clips, videos, reference) -> dict:
    """TrajError of ``videos`` against their clips' tracks, recovered by ``tracker``."""
    results = [
        TrajError(make_tracker(tracker, cfg, clip), reference)(video, clip["tracks"])
        for clip, video in zip(clips, videos, strict=True)
    ]
    per_track = np.concatenate([r.per_track for r in results])
    # Clips by their number of tracks: two objects add the binding of each to its track.
    groups: dict[str, list[np.ndarray]] = {}
    for clip, result in zip(clips, results, strict=True):
        groups.setdefault(str(len(clip["tracks"])), []).append(result.per_track)
    # A frame where no clip's object was found is NaN (counted in coverage), not a warning.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        per_frame = np.nanmean(np.stack([r.per_frame for r in results]), axis=0)
        by_num_tracks = {
            n: float(np.nanmean(np.concatenate(errors)))
            for n, errors in sorted(groups.items(), key=lambda item: int(item[0]))
        }
    return {
        "trajerror": float(np.nanmean(per_track)),
        "by_num_tracks": by_num_tracks,
        "trajerror_per_frame": [round(float(v), 4) for v in per_frame],
        "trajerror_per_clip": [float(r.mean) for r in results],
        "coverage": float(np.mean([r.coverage for r in results])),
    }


ROW_NAMES = {
    "vae": "the clip through the model's VAE (the most a model generating through it can show)",
    "tora": "Tora",
    "no_control": "no control",
}


def write_report(cfg, out_dir: Path, clips, videos: dict, metrics) -> None:
    """metrics.json, report.md and a frame strip per reported clip: its ground truth
    above one row per entry of ``videos`` (name -> one video per clip)."""
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    lines = [
        "# Evaluation",
        "",
        f"checkpoint: `{cfg.ckpt}`; {metrics['num_clips']} held-out clips; {cfg.steps} steps, "
        f"CFG {cfg.cfg_scale}. TrajError (px) by tracker, with the share of points it found "
        "(coverage); each tracker's error on the real clips: "
        + ", ".join(f"`{t}` {floor:.2f} px" for t, floor in metrics["tracker_floors"].items())
        + ".",
        "",
        "| variant | "
        + " | ".join(f"TrajError `{t}` (coverage)" for t in metrics["tracker_floors"])
        + " | FVD | CLIPSIM | s/clip |",
        "|---|" + "---|" * (len(metrics["tracker_floors"]) + 3),
    ]
    for name, row in metrics["variants"].items():
        errors = " | ".join(
            f"{r['trajerror']:.2f} ({r['coverage']:.2f})" for r in row["by_tracker"].values()
        )
        lines.append(
            f"| {name} | {errors} | {fmt(row['fvd'], 1)} | {fmt(row['clipsim'], 4)} "
            f"| {row['seconds_per_clip']:.2f} |"
        )
    unavailable = {
        metric: row[metric]["reason"]
        for row in metrics["variants"].values()
        for metric in ("fvd", "clipsim")
        if isinstance(row[metric], dict)
    }
    lines += [f"\n{metric.upper()} unavailable: {reason}" for metric, reason in unavailable.items()]
    lines += [
        "",
        "Named shape (one-object clips, 6 frames each: the object at the track point "
        "matched to the world's shapes): "
        + ", ".join(
            f"{name} {row['shape_accuracy']:.0%}" for name, row in metrics["variants"].items()
        )
        + f"; real clips {metrics['shape_accuracy_real']:.0%}, their VAE reconstructions "
        f"{metrics['vae_shape_accuracy']:.0%}; chance {1 / len(SHAPES):.0%}.",
    ]
    lines += [
        "",
        "By tracks per clip (" + " / ".join(f"`{t}`" for t in metrics["tracker_floors"]) + "):",
    ]
    for name, row in metrics["variants"].items():
        lines.append(
            f"- {name}: "
            + "; ".join(
                f"{n} track{'s' if n != '1' else ''} ({metrics['clips_by_num_tracks'][n]} clips) "
                + " / ".join(f"{r['by_num_tracks'][n]:.2f}" for r in row["by_tracker"].values())
                for n in metrics["clips_by_num_tracks"]
            )
        )
    lines += [
        "",
        f"The real clips through the model's VAE: PSNR {metrics['vae_psnr']:.2f} dB, "
        f"{metrics['vae_object_psnr']:.2f} dB around the objects; TrajError "
        + ", ".join(f"`{t}` {v:.2f} px" for t, v in metrics["tracker_floors_vae"].items())
        + " (the floor a model generating through this VAE meets).",
    ]
    if "control" in metrics:
        control = metrics["control"]
        lines.append(
            f"No control / Tora: {control['ratio']:.2f}x; share of the reachable gap closed, "
            f"(no control - Tora) / (no control - VAE floor): {control['gap_closed']:.2f} "
            f"(`{cfg.tracker}`)."
        )
    rows_named = ", ".join(ROW_NAMES.get(name, name) for name in videos)
    lines += ["", f"Rows per clip (requested tracks drawn): ground truth, {rows_named}.", ""]
    for i, clip in enumerate(clips[: cfg.report_clips]):
        rows = [frame_strip(clip["video"], clip["tracks"], cfg.report_frames)]
        rows += [frame_strip(videos[name][i], clip["tracks"], cfg.report_frames) for name in videos]
        image = np.concatenate(rows, axis=0)
        path = out_dir / "frames" / f"{i:03d}.png"
        cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        error = metrics["variants"]["tora"]["trajerror_per_clip"][i]
        lines += [
            f"**{clip['caption']}** (TrajError {error:.2f} px)",
            "",
            f"![{clip['key']}](frames/{path.name})",
            "",
        ]
    (out_dir / "report.md").write_text("\n".join(lines))


def log_tensorboard(cfg, clips, generated, metrics) -> None:
    writer = SummaryWriter(str(Path(cfg.paths.log_dir) / "tensorboard" / "evaluate"))
    writer.add_scalar("eval/vae_psnr", metrics["vae_psnr"], 0)
    writer.add_scalar("eval/vae_object_psnr", metrics["vae_object_psnr"], 0)
    writer.add_scalar("eval/vae_shape_accuracy", metrics["vae_shape_accuracy"], 0)
    for name, row in metrics["variants"].items():
        writer.add_scalar(f"eval/{name}/trajerror", row["trajerror"], 0)
        writer.add_scalar(f"eval/{name}/shape_accuracy", row["shape_accuracy"], 0)
        for tracker, result in row["by_tracker"].items():
            writer.add_scalar(f"eval/{name}/trajerror_{tracker}", result["trajerror"], 0)
        for metric in ("fvd", "clipsim"):
            if isinstance(row[metric], float):
                writer.add_scalar(f"eval/{name}/{metric}", row[metric], 0)
    for i, clip in enumerate(clips[: cfg.report_clips]):
        strip = frame_strip(generated["tora"][i], clip["tracks"], cfg.report_frames)
        writer.add_image(f"eval/tora/{i:03d}", strip, 0, dataformats="HWC")
    writer.close()


def print_metrics(metrics: dict) -> None:
    table = Table(title=f"evaluation ({metrics['num_clips']} clips; TrajError px, coverage)")
    table.add_column("variant")
    for tracker in metrics["tracker_floors"]:
        table.add_column(tracker)
    for column in ("FVD", "CLIPSIM", "s/clip"):
        table.add_column(column)
    for name, row in metrics["variants"].items():
        table.add_row(
            name,
            *[f"{r['trajerror']:.2f} ({r['coverage']:.2f})" for r in row["by_tracker"].values()],
            fmt(row["fvd"], 1),
            fmt(row["clipsim"], 4),
            f"{row['seconds_per_clip']:.2f}",
        )
    for label, floors in (
        ("real clips (tracker floor)", metrics["tracker_floors"]),
        ("VAE reconstructions (floor)", metrics["tracker_floors_vae"]),
    ):
        table.add_row(label, *[f"{v:.2f}" for v in floors.values()], "", "", "")
    Console().print(table)
    if "control" in metrics:
        control = metrics["control"]
        Console().print(
            f"VAE PSNR {metrics['vae_psnr']:.2f} dB ({metrics['vae_object_psnr']:.2f} around "
            f"the objects); no control / Tora {control['ratio']:.2f}x; "
            f"gap closed {control['gap_closed']:.2f}"
        )


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="evaluate")
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
