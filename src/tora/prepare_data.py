"""Real-video preparation: ``python -m tora.prepare_data src=<videos> out=<shards>``
(``make prepare-data SRC=... SHARDS=...``; settings in ``configs/prepare_data.yaml``).

Finds the videos under ``src``, cuts them into scenes and clips, scores and
filters the clips, estimates their optical flow and sparse tracks, and writes
the kept ones as shards of the one shard schema, with ``manifest.jsonl`` and
``summary.json`` (see :mod:`tora.data.prepare.run`). Reruns skip the
videos already done.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig
from rich.console import Console

from tora.data.prepare import as_prepare_config, prepare, summary_table
from tora.utils.config import CONFIG_PATH


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="prepare_data")
def main(cfg: DictConfig) -> None:
    """Prepare ``cfg.src`` into ``cfg.out`` and print the summary table."""
    console = Console()
    try:
        summary = prepare(as_prepare_config(cfg), console=console)
    except KeyboardInterrupt:
        print(
            f"prepare_data interrupted: the videos done so far are kept in {cfg.out}; "
            "rerun the same command to resume",
            file=sys.stderr,
        )
        raise SystemExit(130) from None
    console.print(summary_table(summary))


if __name__ == "__main__":
    main()
