"""Turn a training checkpoint into one ``.safetensors`` file for sampling and sharing.

    python -m tora.convert_checkpoint logs/train/.../last.ckpt checkpoints/stage2_traj.safetensors
    python -m tora.convert_checkpoint logs/train/.../last.ckpt tora_modules.safetensors --tora-modules-only

The input is a Lightning ``.ckpt``, a ``.pt`` / ``.safetensors`` state dict, or the
directory Lightning's DeepSpeedStrategy writes under ``trainer=deepspeed_zero{1,2,3}``
(its ZeRO shards are merged back into fp32 weights). What the two outputs hold:
``tora.checkpoints.conversion``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

from tora.checkpoints import DTYPES, MOTION_GUIDANCE_PREFIX, OPTIONAL_GROUPS, convert_checkpoint


def print_summary(summary: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console()
    table = Table(title=f"{summary['source']} -> {summary['output']}", show_header=False)
    table.add_row("content", summary["content"])
    table.add_row("kept", ", ".join(p or "(everything)" for p in summary["prefixes"]))
    table.add_row("trainable", str(summary["trainable"]))
    table.add_row("tensors", f"{summary['tensors']:,}")
    table.add_row("parameters", f"{summary['parameters']:,}")
    table.add_row("size", f"{summary['megabytes']:.1f} MB")
    table.add_row("copied shared", str(summary["copied_shared"]))
    console.print(table)
    for warning in summary["warnings"]:
        console.print(f"[yellow]warning:[/yellow] {warning}")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        prog="python -m tora.convert_checkpoint", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "input",
        help="Lightning .ckpt, .pt / .safetensors state dict, or DeepSpeed checkpoint directory",
    )
    parser.add_argument("output", help="the .safetensors file to write")
    parser.add_argument(
        "--tora-modules-only",
        action="store_true",
        help=f"keep only {MOTION_GUIDANCE_PREFIX}* and the --include groups the run trained",
    )
    parser.add_argument(
        "--include",
        nargs="*",
        default=["temporal_blocks"],
        choices=list(OPTIONAL_GROUPS),
        help="backbone groups added to --tora-modules-only when trained (default: temporal_blocks, "
        "which the paper trains; give --include alone for the motion modules only)",
    )
    parser.add_argument(
        "--dtype", choices=list(DTYPES), help="cast floating-point tensors (default: as stored)"
    )
    args = parser.parse_args(argv)
    summary = convert_checkpoint(
        args.input, args.output, args.tora_modules_only, args.dtype, args.include
    )
    print_summary(summary)
    return summary


if __name__ == "__main__":
    main()
