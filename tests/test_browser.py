"""Every notebook in a real browser: JupyterLab in headless Chromium runs it as a student would.

nbval checks that the notebooks *run*; this checks that a student *sees* them and can use them.
One JupyterLab server (on a temporary copy of notebooks/, so nothing in the repo changes) and one
headless Chromium serve every notebook in notebooks/, whatever chapters exist. For each notebook
the test clicks Run > Run All Cells, waits for every cell, then asserts:

- no cell ended in an error (read from the notebook's model, not guessed from the page);
- every widget view rendered (no "Error displaying widget", no view left loading) and every plotly
  figure drew its SVG;
- the page raised no uncaught JavaScript error;
- moving one control of the notebook's main widget changes what that widget shows (a real
  interaction: the kernel's handler runs and redraws the figure).

The main widget is the widget output carrying the CSS class ``labkit-main`` (ipywidgets'
``add_class``) if a notebook marks one, else the notebook's last widget output that holds a
slider or a drop-down; its first slider or drop-down is moved one step.

JupyterLab 4 renders only the cells in view unless the notebook setting ``windowingMode`` is
``"none"``; the test's own user settings set it, so every cell is in the page. Screenshots of each
notebook's figures and of the main widget before and after the move go to ``artifacts/browser/``
(git-ignored; set ``LABKIT_ARTIFACTS`` to put them elsewhere, e.g. a CI artifacts folder).
Where ``labkit tour`` exists, its HTML report is opened offline too: every figure drawn, no script
fetched from a network, no JavaScript error.

Needs the ``playwright`` package and Debian's chromium at /usr/bin/chromium (no ``playwright
install``); skipped without them.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

sync_api = pytest.importorskip("playwright.sync_api", reason="needs the playwright package")

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
ARTIFACTS = Path(os.environ.get("LABKIT_ARTIFACTS", REPO / "artifacts")) / "browser"
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
SERVER_START_S = 60
RUN_ALL_S = 600  # a ceiling for one notebook's cells on a busy 2-core machine (about 1 min when quiet)
INTERACTION_S = 120  # the handler may re-measure (notebook 01's probe)

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@dataclass(frozen=True)
class Lab:
    """A running JupyterLab: where it answers, with its token."""

    base_url: str
    token: str

    def url(self, notebook: str) -> str:
        """The notebook alone in a fresh workspace (``reset``): no tab of an earlier notebook comes back."""
        workspace = Path(notebook).stem.replace("_", "-")
        return f"{self.base_url}/lab/workspaces/{workspace}/tree/{notebook}?reset&token={self.token}"

    def api(self, path: str, method: str = "GET") -> Any:
        request = urllib.request.Request(
            f"{self.base_url}/api/{path}", method=method, headers={"Authorization": f"token {self.token}"}
        )
        with urllib.request.urlopen(request, timeout=10) as answer:
            body = answer.read()
        return json.loads(body) if body else None


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


def _settings(folder: Path) -> None:
    """A clean user config: no news pop-up, and every cell rendered (``windowingMode: none``)."""
    (folder / "config" / "labconfig").mkdir(parents=True)
    (folder / "config" / "labconfig" / "page_config.json").write_text(
        json.dumps({"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": True}})
    )
    tracker = folder / "settings" / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings"
    tracker.parent.mkdir(parents=True)
    tracker.write_text(json.dumps({"windowingMode": "none"}))


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """One JupyterLab for every notebook, on a copy of notebooks/; always stopped at the end."""
    if not CHROMIUM.exists():
        pytest.skip(f"needs Chromium at {CHROMIUM} (apt-get install chromium)")
    tmp = tmp_path_factory.mktemp("lab")
    root = tmp / "notebooks"
    shutil.copytree(REPO / "notebooks", root, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    _settings(tmp)
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
        f"--LabApp.workspaces_dir={tmp / 'workspaces'}",
        f"--LabApp.user_settings_dir={tmp / 'settings'}",
        "--LabApp.news_url=None",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        "--LabApp.extension_manager=readonly",
        "--allow-root",  # no network; CI containers run as root
        "--LabApp.expose_app_in_browser=True",  # window.jupyterapp: the kernel's state and the notebook's model
    ]
    env = {
        **os.environ,
        "JUPYTER_CONFIG_DIR": str(tmp / "config"),
        "JUPYTER_RUNTIME_DIR": str(tmp / "runtime"),
    }
    log = (tmp / "jupyter.log").open("wb")
    proc = subprocess.Popen(cmd, cwd=root, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        _wait_until_up(proc, f"http://127.0.0.1:{port}/api/status?token={token}", SERVER_START_S)
        yield Lab(f"http://127.0.0.1:{port}", token)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)
        log.close()


@pytest.fixture(scope="module")
def browser(lab: Lab) -> Iterator[Any]:
    with sync_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


# True once the notebook at ``path`` is the current tab and its kernel is connected and idle:
# "Run All" before that can be dropped.
KERNEL_READY_JS = """(path) => {
    const panel = window.jupyterapp?.shell.currentWidget;
    const kernel = panel?.sessionContext?.session?.kernel;
    return panel?.context?.path === path && kernel?.connectionStatus === 'connected' && kernel?.status === 'idle';
}"""

# True once every code cell before cell ``upto`` shows an execution count ("[3]:"), none is queued
# or running ("[*]:"), and the kernel is idle again.
CELLS_RAN_JS = """(upto) => {
    const panel = window.jupyterapp.shell.currentWidget;
    const code = panel.content.widgets.slice(0, upto).filter(c => c.model.type === 'code');
    const prompts = code.map(c => c.node.querySelector('.jp-InputPrompt')?.textContent ?? '');
    return prompts.every(p => /\\[\\d+\\]/.test(p)) && panel.sessionContext.session?.kernel?.status === 'idle';
}"""

# Make cell ``index`` the active one and run a notebook command from it, as a student would with the
# Run menu: "notebook:run-all-above" (every cell above it) or "notebook:run-all-below" (it and below).
RUN_FROM_JS = """([index, command]) => {
    const panel = window.jupyterapp.shell.currentWidget;
    panel.content.activeCellIndex = index;
    panel.content.deselectAll();
    window.jupyterapp.commands.execute(command);
}"""

# The notebook's outputs as the kernel sent them: error outputs, and how many of each rich type.
MODEL_OUTPUTS_JS = """() => {
    const cells = window.jupyterapp.shell.currentWidget.content.model.cells;
    const found = {errors: [], widgetViews: 0, plotly: 0, codeCells: 0};
    for (let i = 0; i < cells.length; i++) {
        const cell = cells.get(i);
        if (cell.type !== 'code') continue;
        found.codeCells++;
        for (let j = 0; j < cell.outputs.length; j++) {
            const out = cell.outputs.get(j).toJSON();
            if (out.output_type === 'error') found.errors.push(`cell ${i}: ${out.ename}: ${out.evalue}`);
            const data = out.data || {};
            if (data['application/vnd.jupyter.widget-view+json']) found.widgetViews++;
            if (data['application/vnd.plotly.v1+json']) found.plotly++;
        }
    }
    return found;
}"""

UNFOLD_JS = "() => document.querySelectorAll('.jp-Notebook details').forEach(d => { d.open = true; })"

# What the page shows: widget views rendered or not, plotly figures drawn or not.
RENDERED_JS = """() => {
    const views = [...document.querySelectorAll('.jp-Notebook .jp-OutputArea-output')]
        .filter(o => o.querySelector('.jupyter-widgets, .widget-box, .widget-inline-hbox')
                     || /Error displaying widget|Loading widget/.test(o.textContent));
    const broken = views.filter(o => /Error displaying widget|Loading widget/.test(o.textContent))
        .map(o => o.textContent.slice(0, 200));
    const plots = [...document.querySelectorAll('.jp-Notebook .js-plotly-plot')];
    const undrawn = plots.filter(p => !p.querySelector('.main-svg') || p.getBoundingClientRect().height < 50);
    return {views: views.length, broken, plots: plots.length, undrawn: undrawn.length};
}"""

# Mark the main widget's output in cell ``index``: one carrying the CSS class labkit-main, else the
# first output there that holds a slider or a drop-down.
FIND_MAIN_JS = """(index) => {
    const cell = window.jupyterapp.shell.currentWidget.content.widgets[index];
    const outputs = [...cell.node.querySelectorAll('.jp-OutputArea-output')];
    const main = cell.node.querySelector('.labkit-main')?.closest('.jp-OutputArea-output')
        ?? outputs.find(o => o.querySelector('.widget-slider, .widget-dropdown'));
    main?.setAttribute('data-labkit-main', 'yes');
    return Boolean(main);
}"""

# What the main widget shows apart from its controls (a slider's own readout changes in the browser,
# before the kernel answers): each plotly figure's data and layout title, and the rest of its text.
SHOWN_JS = """(main) => {
    const rest = main.cloneNode(true);
    rest.querySelectorAll('.widget-slider, .widget-dropdown, .widget-toggle-buttons, .js-plotly-plot')
        .forEach(n => n.remove());
    return JSON.stringify({
        figures: JSON.stringify([...main.querySelectorAll('.js-plotly-plot')].map(g => [g.data, g.layout?.title])),
        text: rest.innerText ?? rest.textContent,
    });
}"""


def _main_widget_cell(cells: list[dict[str, Any]]) -> int | None:
    """The cell showing the notebook's main widget: the one tagged ``labkit-main``, else the last
    code cell that displays a labkit panel's ``.widget``."""
    for index, cell in enumerate(cells):
        if "labkit-main" in cell.get("metadata", {}).get("tags", []):
            return index
    shown = [
        i
        for i, c in enumerate(cells)
        if c["cell_type"] == "code" and re.search(r"\.widget\b", "".join(c["source"]))
    ]
    return shown[-1] if shown else None


def _open(page: Any, lab: Lab, notebook: str) -> None:
    page.goto(lab.url(notebook))
    page.wait_for_selector(".jp-Notebook .jp-CodeCell")
    page.wait_for_function(KERNEL_READY_JS, arg=notebook, timeout=SERVER_START_S * 1000, polling=250)


def _run(page: Any, command: str, start: int, upto: int) -> None:
    """Run ``command`` from cell ``start``; wait until every code cell before ``upto`` has run."""
    page.evaluate(RUN_FROM_JS, [start, command])
    page.wait_for_function(CELLS_RAN_JS, arg=upto, timeout=RUN_ALL_S * 1000, polling=500)


def _wait_for_rendering(page: Any, name: str, outputs: dict[str, Any]) -> None:
    """Wait until every widget view and plotly figure the kernel sent is drawn; fail naming what is not."""
    done = (
        f"() => {{ const s = ({RENDERED_JS})(); return s.views >= {outputs['widgetViews']} "
        f"&& s.broken.length === 0 && s.undrawn === 0 && s.plots >= {outputs['plotly']}; }}"
    )
    try:
        page.wait_for_function(done, timeout=60_000, polling=500)
    except sync_api.TimeoutError:
        shown = page.evaluate(RENDERED_JS)
        pytest.fail(f"{name}: not everything rendered: {shown} in the page, for {outputs} sent by the kernel")


def _move_first_control(main: Any) -> str:
    """Move the main widget's first slider one step right, or pick its first drop-down's next option."""
    control = main.locator(".widget-slider, .widget-dropdown").first
    control.scroll_into_view_if_needed()
    if "widget-dropdown" in (control.get_attribute("class") or ""):
        select = control.locator("select")
        options = select.locator("option").all_inner_texts()
        current = select.evaluate("s => s.selectedIndex")
        select.select_option(index=(current + 1) % len(options))
        return f"drop-down -> {options[(current + 1) % len(options)]!r}"
    handle = control.locator(".noUi-handle").first
    handle.focus()
    handle.press("ArrowRight")
    return "slider one step right"


def _check_the_answer(name: str, moved: str, before: dict[str, Any], after: dict[str, Any]) -> None:
    """The widget answered the move by redrawing, not with an error message.

    A changed figure always counts; changed text counts when it reports no failure (notebook 03's
    explorer answers a pick in its details panel, its map stays as it is).
    """
    failure = re.search(r"cannot measure[^\n]*|Traceback|\w+Error: [^\n]*", after["text"])
    assert failure is None, f"{name}: after '{moved}' the widget shows an error: {failure.group(0)[:300]}"
    assert after["figures"] != before["figures"] or after["text"] != before["text"], (
        f"{name}: nothing changed"
    )


def _screenshots(page: Any, stem: str) -> None:
    """Each plotly figure of the notebook, one PNG each, under artifacts/browser/NOTEBOOK/."""
    plots = page.locator(".jp-Notebook .js-plotly-plot")
    for index in range(plots.count()):
        plots.nth(index).scroll_into_view_if_needed()
        plots.nth(index).screenshot(path=ARTIFACTS / stem / f"figure-{index + 1:02d}.png")


def _stop_kernels(lab: Lab) -> None:
    """Shut every session's kernel down, so each notebook starts with the machine's memory free."""
    for session in lab.api("sessions"):
        lab.api(f"sessions/{session['id']}", method="DELETE")


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_renders_and_responds_in_jupyterlab(notebook: Path, lab: Lab, browser: Any) -> None:
    """Run the cells down to the main widget's, move its control, then run the rest.

    The widget is tried before the cells below it run: a notebook's last cell may free what its
    widgets use (a closed file, a removed folder) and ask the student to shut the kernel down.
    """
    cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    main_cell = _main_widget_cell(cells)
    assert main_cell is not None, (
        f"{notebook.name}: no cell shows a widget (`panel.widget`) or is tagged labkit-main"
    )
    shutil.rmtree(ARTIFACTS / notebook.stem, ignore_errors=True)
    (ARTIFACTS / notebook.stem).mkdir(parents=True)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page_errors: list[str] = []
    page.on("pageerror", lambda error: page_errors.append(str(error)))
    page.set_default_timeout(30_000)
    try:
        _open(page, lab, notebook.name)
        _run(page, "notebook:run-all-above", main_cell + 1, main_cell + 1)
        assert page.evaluate(FIND_MAIN_JS, main_cell), (
            f"{notebook.name}: cell {main_cell}'s widget has no control"
        )
        main = page.locator('[data-labkit-main="yes"]')
        main.scroll_into_view_if_needed()
        main.locator(".widget-slider, .widget-dropdown").first.wait_for(state="visible")
        main.screenshot(path=ARTIFACTS / notebook.stem / "main-widget-before.png")
        before = main.evaluate(SHOWN_JS)
        moved = _move_first_control(main)
        changed = f"(main) => ({SHOWN_JS})(main) !== {json.dumps(before)}"
        page.wait_for_function(
            f"() => ({changed})(document.querySelector('[data-labkit-main=\"yes\"]'))",
            timeout=INTERACTION_S * 1000,
            polling=500,
        )
        page.wait_for_function(CELLS_RAN_JS, arg=main_cell + 1, timeout=INTERACTION_S * 1000)  # handler done
        main.screenshot(path=ARTIFACTS / notebook.stem / "main-widget-after.png")
        _check_the_answer(notebook.name, moved, json.loads(before), json.loads(main.evaluate(SHOWN_JS)))

        if main_cell + 1 < len(cells):
            _run(page, "notebook:run-all-below", main_cell + 1, len(cells))
        outputs = page.evaluate(MODEL_OUTPUTS_JS)
        assert outputs["errors"] == [], f"{notebook.name}: a cell failed: {outputs['errors']}"
        page.evaluate(UNFOLD_JS)  # the widgets' static copies sit folded in <details>: check those too
        _wait_for_rendering(page, notebook.name, outputs)
        _screenshots(page, notebook.stem)
        assert page_errors == [], f"{notebook.name}: JavaScript errors: {page_errors}"
    finally:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=ARTIFACTS / f"{notebook.stem}-last.png", full_page=True)  # pass or fail
        page.close()
        _stop_kernels(lab)


def _tour_registered() -> bool:
    from labkit.cli import SUBCOMMANDS

    return "tour" in SUBCOMMANDS


@pytest.mark.skipif(not _tour_registered(), reason="`labkit tour` is not part of this labkit yet")
def test_tour_report_opens_offline_with_every_figure_drawn(tmp_path: Path, lab: Lab, browser: Any) -> None:
    """`labkit tour --quick` writes one self-contained HTML report; Chromium draws it without a network."""
    out = tmp_path / "tour"
    out.mkdir()
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from labkit.cli import main; sys.exit(main())",
            "tour",
            "--quick",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=RUN_ALL_S,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    (report,) = sorted(out.glob("*.html"))
    assert "<script src=" not in report.read_text(encoding="utf-8"), (
        "the report must not load scripts from a network"
    )
    context = browser.new_context(offline=True, viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page_errors: list[str] = []
    page.on("pageerror", lambda error: page_errors.append(str(error)))
    try:
        page.goto(report.as_uri())
        page.wait_for_function(
            "() => { const p = [...document.querySelectorAll('.js-plotly-plot')];"
            " return p.length > 0 && p.every(g => g.querySelector('.main-svg')); }",
            timeout=60_000,
        )
        assert page_errors == [], f"JavaScript errors in the report: {page_errors}"
        assert "measured" in page.inner_text("body")
    finally:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=ARTIFACTS / "tour-report.png", full_page=True)
        context.close()
