"""``python -m tora.evaluate_vae 'vae_ckpts=[A.ckpt,B.ckpt]'``: the floors each video VAE
sets for any model generating through it, on the held-out clips ``tora.evaluate`` uses:
PSNR, PSNR around the objects, and each tracker's TrajError on its reconstructions.

With several VAEs (one setting trained with several seeds, or settings side by side) it
also reports their mean and spread, since one VAE training is a noisy draw
(docs/findings.md). Writes ``metrics.json``, ``report.md`` and frame strips to ``out_dir``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import cv2
import hydra
import numpy as np
from omegaconf import DictConfig
from rich.console import Console
from rich.progress import track
from rich.table import Table

from tora.checkpoints.files import read_hyper_parameters
from tora.evaluate import frame_strip, held_out_clips, reconstructions, tracker_names, vae_floors
from tora.models.build import build_vae
from tora.utils.config import CONFIG_PATH
from tora.utils.device import resolve_device

log = logging.getLogger(__name__)


def load_video_vae(path: str):
    """The VAE a video-VAE run exported (``make train-video-vae``), built from the
    architecture stored with it."""
    config = read_hyper_parameters(path).get("vae")
    if not config:
        raise ValueError(
            f"vae_ckpts: {path} stores no VAE config (hyper_parameters.vae); a checkpoint "
            "of `python -m tora.train experiment=video_vae` expected"
        )
    return build_vae(config, path, source=f"{path}: vae").eval()


def evaluate_vaes(cfg: DictConfig) -> dict:
    paths = [str(p) for p in cfg.vae_ckpts]
    if not paths:
        raise ValueError("vae_ckpts: at least one video VAE checkpoint expected")
    trackers = tracker_names(cfg)
    vaes = {path: load_video_vae(path) for path in paths}  # every file checked before the work
    device = resolve_device(cfg.device)
    clips = held_out_clips(cfg)
    reference = tuple(cfg.reference_size) if cfg.get("reference_size") else None
    rows, strips = {}, {}
    for path, vae in track(vaes.items(), description="VAEs"):
        rebuilt = reconstructions(vae.to(device), clips, cfg.batch_size, device)
        rows[path] = vae_floors(cfg, clips, rebuilt, trackers, reference)
        strips[path] = rebuilt[: cfg.report_clips]
    metrics = {"num_clips": len(clips), "vaes": rows, "summary": summary(rows)}
    write_report(cfg, Path(cfg.out_dir), clips, strips, metrics)
    print_table(metrics)
    return metrics


def columns(row: dict) -> dict[str, float]:
    """A row's numbers under their column names."""
    return {
        "PSNR dB": row["psnr"],
        "object PSNR dB": row["object_psnr"],
        "named shape %": 100 * row["shape_accuracy"],
        **{f"{tracker} px": value for tracker, value in row["trackers"].items()},
    }


def summary(rows: dict) -> dict[str, dict[str, float]]:
    """Mean and sample standard deviation of every column over the VAEs."""
    table = np.array([list(columns(row).values()) for row in rows.values()])
    names = list(columns(next(iter(rows.values()))))
    spread = table.std(axis=0, ddof=1) if len(table) > 1 else np.zeros(len(names))
    return {
        name: {"mean": float(mean), "std": float(std)}
        for name, mean, std in zip(names, table.mean(axis=0), spread, strict=True)
    }


def write_report(cfg: DictConfig, out_dir: Path, clips, strips: dict, metrics: dict) -> None:
    (out_dir / "frames").mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    names = list(metrics["summary"])
    lines = [
        "# VAE floors",
        "",
        f"{metrics['num_clips']} held-out clips through each VAE; object PSNR over squares "
        f"{cfg.object_box} of the short side wide around every track point; TrajError of the "
        "trackers on the reconstructions (the floor a model generating through the VAE meets).",
        "",
        "| VAE | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for path, row in metrics["vaes"].items():
        lines.append(
            f"| `{path}` | " + " | ".join(f"{v:.2f}" for v in columns(row).values()) + " |"
        )
    if len(metrics["vaes"]) > 1:
        lines.append(
            "| mean ± sd | "
            + " | ".join(f"{s['mean']:.2f} ± {s['std']:.2f}" for s in metrics["summary"].values())
            + " |"
        )
    lines += [
        "",
        "Rows per clip: ground truth, then each VAE's reconstruction in the order above.",
        "",
    ]
    for i, clip in enumerate(clips[: cfg.report_clips]):
        rows = [frame_strip(clip["video"], None, cfg.report_frames)]
        rows += [frame_strip(videos[i], None, cfg.report_frames) for videos in strips.values()]
        path = out_dir / "frames" / f"{i:03d}.png"
        cv2.imwrite(str(path), cv2.cvtColor(np.concatenate(rows, axis=0), cv2.COLOR_RGB2BGR))
        lines += [f"**{clip['caption']}**", "", f"![{clip['key']}](frames/{path.name})", ""]
    (out_dir / "report.md").write_text("\n".join(lines))


def print_table(metrics: dict) -> None:
    table = Table(title=f"VAE floors ({metrics['num_clips']} held-out clips)")
    table.add_column("VAE", overflow="fold")
    for name in metrics["summary"]:
        table.add_column(name)
    for path, row in metrics["vaes"].items():
        table.add_row(path, *[f"{v:.2f}" for v in columns(row).values()])
    if len(metrics["vaes"]) > 1:
        table.add_row(
            "mean ± sd", *[f"{s['mean']:.2f} ± {s['std']:.2f}" for s in metrics["summary"].values()]
        )
    Console().print(table)


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="evaluate_vae")
def main(cfg: DictConfig) -> None:
    evaluate_vaes(cfg)


if __name__ == "__main__":
    main()
