"""Where the configs live: the ``tora.configs`` package, so an installed wheel and an
editable checkout find them alike (entry points use ``pkg://tora.configs``; users add
their own folder with ``hydra.searchpath=[file:///path/to/configs]``)."""

from __future__ import annotations

from pathlib import Path

import tora.configs

CONFIG_PATH = "pkg://tora.configs"
CONFIG_DIR = Path(tora.configs.__file__).resolve().parent
