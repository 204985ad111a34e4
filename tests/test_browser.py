"""The TraceExplorer in a real browser: Voilà serves it, headless Chromium moves its slider.

Needs Debian's ``chromium`` (``.ci/run`` installs it) and the ``playwright`` and ``voila``
packages (dev extras); without them the test is skipped with the reason.
"""

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from lvlm_kit import trace

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.kernels,
    pytest.mark.skipif(
        not Path(CHROMIUM).exists(), reason="no chromium (apt-get install chromium)"
    ),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def served(tiny_llava, image, tmp_path):
    """URL of a Voilà page showing a TraceExplorer over a trace of the tiny model."""
    pytest.importorskip("voila")
    path = trace(tiny_llava, image, "Describe the image.", 6).save(tmp_path / "t.safetensors")
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell(
            "from lvlm_kit import Trace\nfrom lvlm_kit.widgets import TraceExplorer\n"
            f"TraceExplorer(Trace.load({str(path)!r})).widget"
        )
    ]
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nbformat.write(nb, tmp_path / "explorer.ipynb")
    port = _free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "voila",
            "explorer.ipynb",
            "--no-browser",
            f"--port={port}",
            "--Voila.ip=127.0.0.1",
        ],
        cwd=tmp_path,
        stdout=open(tmp_path / "voila.log", "w"),
        stderr=subprocess.STDOUT,
        env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"},
    )  # the kernel is this environment's python
    url = f"http://127.0.0.1:{port}/"
    try:
        for _ in range(120):  # until the server accepts connections
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_explorer_slider_changes_table_title_and_trajectory(served, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page()
        page.goto(served, timeout=180_000)
        page.wait_for_selector("table.dataframe", timeout=180_000)
        page.wait_for_selector(".widget-output img", timeout=180_000)
        before = {
            "table": page.inner_text("table.dataframe"),
            "title": page.inner_text(".widget-html b"),
            "plot": page.get_attribute(".widget-output img", "src"),
        }
        page.screenshot(path=tmp_path / "token0.png", full_page=True)
        assert before["title"].startswith("token 0:")
        assert "top1" in before["table"] and "rank(emitted)" in before["table"]
        page.focus(".noUi-handle")
        page.keyboard.press("ArrowRight")  # token 0 -> token 1
        page.wait_for_function(
            "src => document.querySelector('.widget-output img').src !== src",
            arg=before["plot"],
            timeout=180_000,
        )
        assert page.inner_text(".widget-html b").startswith("token 1:")
        assert page.inner_text("table.dataframe") != before["table"]
        page.screenshot(path=tmp_path / "token1.png", full_page=True)
        browser.close()
    for name in ("token0.png", "token1.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (tmp_path / name).stat().st_size > 10_000
