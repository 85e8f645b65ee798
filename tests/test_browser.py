"""Browser smoke test: JupyterLab really renders notebook 01's plotly figure and ipywidgets.

nbval checks that the notebooks *run*; this checks that a student *sees* them. It starts
`jupyter lab` on a temporary copy of notebooks/ (so nothing in the repo changes), opens notebook 01
in headless Chromium with Playwright, runs all cells and looks for a plot, a widget and no traceback.
Needs the `playwright` package and Debian's chromium at /usr/bin/chromium (no `playwright install`).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

sync_api = pytest.importorskip("playwright.sync_api", reason="needs the playwright package")

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
NOTEBOOK = "01_memory_hierarchy.ipynb"
SERVER_START_S = 60
RUN_ALL_S = 120

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_until_up(proc: subprocess.Popen, status_url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"jupyter lab exited early with code {proc.returncode}")
        try:
            with urllib.request.urlopen(status_url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"jupyter lab did not answer {status_url} within {timeout_s} s")


@pytest.fixture
def lab_url(tmp_path: Path) -> Iterator[str]:
    """Start JupyterLab on a copy of notebooks/; yield notebook 01's URL with the token; always stop it."""
    if not CHROMIUM.exists():
        pytest.skip(f"needs Chromium at {CHROMIUM} (apt-get install chromium)")
    root = tmp_path / "notebooks"
    shutil.copytree(REPO / "notebooks", root, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    port, token = _free_port(), secrets.token_hex(16)
    cmd = [
        sys.executable,
        "-m",
        "jupyterlab",
        "--no-browser",
        "--ip=127.0.0.1",
        f"--port={port}",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={root}",
        f"--LabApp.workspaces_dir={tmp_path / 'workspaces'}",
        "--LabApp.news_url=None",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        "--LabApp.extension_manager=readonly",
        "--allow-root",  # no network; CI containers run as root
        "--LabApp.expose_app_in_browser=True",  # window.jupyterapp, to see when the kernel is connected
    ]
    config = tmp_path / "config"  # a clean user config, without the "Jupyter news?" pop-up
    (config / "labconfig").mkdir(parents=True)
    (config / "labconfig" / "page_config.json").write_text(
        json.dumps({"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": True}})
    )
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(config), "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime")}
    log = (tmp_path / "jupyter.log").open("wb")
    proc = subprocess.Popen(cmd, cwd=root, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        _wait_until_up(proc, f"http://127.0.0.1:{port}/api/status?token={token}", SERVER_START_S)
        yield f"http://127.0.0.1:{port}/lab/tree/{NOTEBOOK}?token={token}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)
        log.close()


# True once the notebook's kernel is connected and idle: "Run All" before that can be dropped.
KERNEL_READY_JS = """() => {
    const kernel = window.jupyterapp?.shell.currentWidget?.sessionContext?.session?.kernel;
    return kernel?.connectionStatus === 'connected' && kernel?.status === 'idle';
}"""

# True once every code cell shows an execution count ("[3]:"), none is queued or running ("[*]:").
ALL_CELLS_RAN_JS = """() => {
    const prompts = [...document.querySelectorAll('.jp-Notebook .jp-CodeCell .jp-InputPrompt')];
    return prompts.length > 0 && prompts.every(p => /\\[\\d+\\]/.test(p.textContent));
}"""


def test_notebook_01_renders_plot_and_widgets(lab_url: str, tmp_path: Path) -> None:
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        try:
            page.set_default_timeout(30_000)
            page.goto(lab_url)
            page.wait_for_selector(".jp-Notebook .jp-CodeCell")
            page.wait_for_function(KERNEL_READY_JS, timeout=SERVER_START_S * 1000, polling=250)

            page.get_by_role("menuitem", name="Run", exact=True).click()
            page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
            page.wait_for_function(ALL_CELLS_RAN_JS, timeout=RUN_ALL_S * 1000, polling=500)

            outputs = page.locator(".jp-Notebook .jp-OutputArea-output")
            plot = outputs.locator(".js-plotly-plot .main-svg").first
            widget = outputs.locator(".widget-slider, .widget-dropdown").first  # ipywidgets 8 classes
            plot.scroll_into_view_if_needed()
            plot.wait_for(state="visible")
            page.screenshot(path=tmp_path / "plot.png")
            widget.scroll_into_view_if_needed()
            widget.wait_for(state="visible")
            page.screenshot(path=tmp_path / "widget.png")

            stderr = outputs.locator('.jp-RenderedText[data-mime-type="application/vnd.jupyter.stderr"]')
            errors = [t for t in stderr.all_inner_texts() if "Traceback" in t or "Error" in t]
            assert errors == [], f"a cell failed:\n{errors[0][:2000]}"
        finally:
            page.screenshot(path=tmp_path / "last.png")  # what the page showed, pass or fail
            browser.close()
