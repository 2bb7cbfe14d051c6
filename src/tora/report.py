"""``python -m tora.report sweep_dir=DIR``: evaluate each run of an ablation sweep
and write one results table (markdown + CSV) and a TrajError bar chart, with the
no-control baseline as the last row."""

from __future__ import annotations

import csv
import logging
from datetime import date
from pathlib import Path
from typing import cast

import hydra
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import yaml  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from tora.evaluate import evaluate, fmt  # noqa: E402
from tora.utils.config import CONFIG_PATH  # noqa: E402

log = logging.getLogger(__name__)


def sweep_runs(sweep_dir: Path) -> list[tuple[Path, list[str]]]:
    """Runs of a sweep with a checkpoint, in job order, with their overrides."""
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"sweep_dir {sweep_dir} is not a directory")
    runs = []
    for run in sorted(
        (p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit()),
        key=lambda p: int(p.name),
    ):
        checkpoint = run / "checkpoints" / "last.ckpt"
        overrides = run / ".hydra" / "overrides.yaml"
        if not checkpoint.exists() or not overrides.exists():
            log.warning("skipping %s: no checkpoints/last.ckpt or .hydra/overrides.yaml", run)
            continue
        runs.append((run, yaml.safe_load(overrides.read_text())))
    if not runs:
        raise FileNotFoundError(f"sweep_dir {sweep_dir}: no run folder with checkpoints/last.ckpt")
    return runs


def variant_labels(overrides: list[list[str]]) -> list[str]:
    """The overrides that differ between runs (what the sweep varied)."""
    varying = [
        o
        for o in sorted({o for run in overrides for o in run})
        if not all(o in run for run in overrides)
    ]
    return [", ".join(o for o in run if o in varying) or "default" for run in overrides]


def report(cfg: DictConfig) -> list[dict]:
    sweep_dir = Path(cfg.sweep_dir)
    runs = sweep_runs(sweep_dir)
    labels = variant_labels([overrides for _, overrides in runs])
    rows = []
    for index, ((run, _), label) in enumerate(zip(runs, labels, strict=True)):
        run_cfg = OmegaConf.merge(
            cfg,
            {
                "ckpt": str(run / "checkpoints" / "last.ckpt"),
                "out_dir": str(run / "eval"),
                "baseline": index == 0,
            },
        )
        metrics = evaluate(cast(DictConfig, run_cfg))  # a DictConfig merged into one
        rows.append({"variant": label, **summary(metrics["variants"]["tora"])})
        if index == 0:
            baseline = {
                "variant": "no control (same base, same prompts and seeds)",
                **summary(metrics["variants"]["no_control"]),
            }
    rows.append(baseline)
    write_tables(sweep_dir, rows, cfg)
    return rows


def summary(row: dict) -> dict:
    """The headline TrajError, each extra tracker's, FVD and CLIPSIM of one variant."""
    extra = {t: r["trajerror"] for t, r in list(row["by_tracker"].items())[1:]}
    return {
        "trajerror": row["trajerror"],
        "extra": extra,
        "fvd": row["fvd"],
        "clipsim": row["clipsim"],
    }


def write_tables(sweep_dir: Path, rows: list[dict], cfg: DictConfig) -> None:
    extra = list(rows[0]["extra"])
    with open(sweep_dir / "ablation.csv", "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(
            ["variant", "trajerror_px", *[f"trajerror_{t}_px" for t in extra], "fvd", "clipsim"]
        )
        for row in rows:
            writer.writerow(
                [
                    row["variant"],
                    f"{row['trajerror']:.4f}",
                    *[f"{row['extra'][t]:.4f}" for t in extra],
                    fmt(row["fvd"], 2),
                    fmt(row["clipsim"], 4),
                ]
            )
    lines = [
        f"# Ablation: {sweep_dir}",
        "",
        f"{date.today().isoformat()}; {cfg.num_samples} held-out clips, {cfg.steps} sampling steps, "
        f"CFG {cfg.cfg_scale}, tracker `{cfg.tracker}`.",
        "",
        "| variant | TrajError (px) ↓ | "
        + "".join(f"TrajError `{t}` (px) ↓ | " for t in extra)
        + "FVD ↓ | CLIPSIM ↑ |",
        "|---|---|" + "---|" * len(extra) + "---|---|",
    ]
    lines += [
        f"| {r['variant']} | {r['trajerror']:.2f} | "
        + "".join(f"{r['extra'][t]:.2f} | " for t in extra)
        + f"{fmt(r['fvd'], 1)} | {fmt(r['clipsim'], 4)} |"
        for r in rows
    ]
    lines += ["", "![TrajError](trajerror.png)", ""]
    (sweep_dir / "ablation.md").write_text("\n".join(lines))

    figure, axis = plt.subplots(figsize=(1.6 * len(rows) + 2, 3.5))
    colors = ["tab:blue"] * (len(rows) - 1) + ["tab:gray"]
    axis.bar(range(len(rows)), [r["trajerror"] for r in rows], color=colors)
    axis.set_xticks(
        range(len(rows)),
        [r["variant"].split(" (")[0] for r in rows],
        rotation=20,
        ha="right",
        fontsize=8,
    )
    axis.set_ylabel("TrajError (px, lower is better)")
    axis.set_title(sweep_dir.parent.parent.name)
    figure.tight_layout()
    figure.savefig(sweep_dir / "trajerror.png", dpi=120)
    plt.close(figure)
    log.info("wrote %s", sweep_dir / "ablation.md")


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="report")
def main(cfg: DictConfig) -> None:
    report(cfg)


if __name__ == "__main__":
    main()
