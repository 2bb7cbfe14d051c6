"""The package as a user installs it: a wheel in a fresh virtual environment, run from
another directory, finds its configs and writes under the directory it runs from."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run(args: list, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(args, capture_output=True, text=True, timeout=900, **kwargs)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result


@pytest.mark.slow
def test_installed_wheel_trains_from_another_directory(tmp_path, synthetic_shards):
    run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path / "dist"),
            str(REPO),
        ]
    )
    wheel = next((tmp_path / "dist").glob("tora-*.whl"))
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)])
    python = venv / "bin" / "python"
    # The dependencies come from the test environment (a path entry: its editable
    # install of tora is not activated); tora itself only from the wheel.
    site = Path(run([python, "-c", "import site; print(site.getsitepackages()[0])"]).stdout.strip())
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run([python, "-m", "pip", "install", "--no-deps", "-q", str(wheel)])
    where = run([python, "-c", "import tora; print(tora.__file__)"]).stdout
    assert where.startswith(str(site)), where

    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    run(
        [
            python,
            "-m",
            "tora.train",
            "experiment=video_vae",
            "debug=fdr",
            f"data.train_shards={synthetic_shards}/train-*.tar",
            f"data.val_shards={synthetic_shards}/val-*.tar",
            "data.num_workers=0",
            "extras.print_config=false",
        ],
        cwd=workdir,
    )
    assert list((workdir / "logs" / "debug" / "runs").iterdir())  # debug=fdr names the task
    assert not list(site.glob("logs")) and not (site.parent / "logs").exists()
