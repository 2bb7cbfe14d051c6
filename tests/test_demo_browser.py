"""The demo page as a user meets it: ``python -m tora.demo`` started on a free port,
scripted with ``gradio_client``, and driven in headless Chromium (Debian's
``chromium`` package, through Playwright with the system browser): click two
trajectories, see an error in words, generate, get a playable video and the TrajError."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from gradio_client import Client

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no Chromium on PATH: the browser test needs Debian's chromium "
    "(apt-get install -y chromium chromium-driver)",
)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def page_url(chain, tmp_path_factory):
    """``python -m tora.demo`` on a free port, as ``make demo`` starts it."""
    port = free_port()
    run_dir = tmp_path_factory.mktemp("demo_cli")
    log = (run_dir / "server.log").open("w")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tora.demo",
            f"ckpt={chain}/stage2_traj.ckpt",
            f"server_port={port}",
            "server_name=127.0.0.1",
            f"out_dir={run_dir}/out",
            f"hydra.run.dir={run_dir}/hydra",
            "device=cpu",
        ],
        cwd=run_dir,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 300
    while True:
        if server.poll() is not None:
            raise RuntimeError(f"the demo exited: {(run_dir / 'server.log').read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    break
        except OSError:
            if time.monotonic() > deadline:
                server.kill()
                raise
            time.sleep(1)
    yield url
    server.terminate()
    server.wait(timeout=30)
    log.close()


def test_the_cli_server_answers_gradio_client(page_url):
    client = Client(page_url, verbose=False)
    assert list(client.view_api(print_info=False, return_format="dict")["named_endpoints"]) == [
        "/generate"
    ]
    tracks = json.dumps({"canvas": [64, 64], "tracks": [[[5, 5], [60, 60]]]})
    video, _, trajerror, files, note = client.predict(
        "a red circle", tracks, None, 5, 1, 7.0, 7.0, 0, "", api_name="/generate"
    )
    assert Path(video).stat().st_size > 0 and trajerror is not None
    assert "5 frames at 64x64" in note


@needs_chromium
def test_draw_two_trajectories_and_generate_in_chromium(page_url):
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright not installed (pip install -e '.[dev]')"
    )
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1366, "height": 900})
            page.goto(page_url)
            canvas = page.locator("#canvas img")
            canvas.wait_for(timeout=60_000)
            box = canvas.bounding_box()

            def click(x: float, y: float, counted: str) -> None:
                """Click at a fraction of the canvas; wait until the page counts the point."""
                canvas.click(position={"x": box["width"] * x, "y": box["height"] * y})
                page.wait_for_function(
                    "text => document.querySelector('#status').innerText.includes(text)",
                    arg=counted,
                )

            click(0.15, 0.8, "1: 1 point")
            page.locator("#steps input[type=number]").fill("2")
            page.locator("#steps input[type=number]").press("Enter")
            page.locator("#generate").click()
            error = page.get_by_text("a trajectory needs at least 2 points")
            error.first.wait_for(timeout=60_000)

            click(0.5, 0.5, "1: 2 points")
            click(0.85, 0.25, "1: 3 points")
            page.get_by_role("button", name="New trajectory").click()
            page.wait_for_function(
                "() => document.querySelector('#status').innerText.includes('next click')"
            )
            click(0.8, 0.8, "2: 1 point")
            click(0.3, 0.6, "2: 2 points")

            page.locator("#generate").click()
            page.wait_for_function(
                "() => { const v = document.querySelector('#video video');"
                " return v && v.src && v.readyState >= 1 && v.duration > 0 }",
                timeout=120_000,
            )
            trajerror = page.locator("#trajerror input")
            trajerror.wait_for(timeout=30_000)
            assert float(trajerror.input_value()) >= 0
            assert page.locator("#video video").evaluate("v => v.error") is None
            assert "2 steps" in page.locator("#note").inner_text()
        finally:
            browser.close()
