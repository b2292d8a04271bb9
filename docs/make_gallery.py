"""Redraw every picture of the README and the documentation site into docs/images/.

    python docs/make_gallery.py                  # about 5 minutes on 2 CPU cores
    python docs/make_gallery.py --reuse DIR      # retake the pictures of an earlier call's runs

The pictures come from real runs, made as a user makes them: the MLproject's default fit
(``mlflow run . --env-manager local``: digits, imbalance ratio 20, 60 epochs) and its
``compare`` entry point, logged to an ``mlflow server`` (SQLite) that this script starts on
127.0.0.1 in a work folder (printed; ``--reuse`` it). The MLflow UI is opened in headless
Chromium with a fresh profile, as a newcomer's browser opens it, and every picture is taken
once the page has drawn: no loading indicator left and the chart elements present, never after
a fixed wait. Needs Debian's ``chromium`` and ``playwright`` (the test extras).
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
IMAGES = REPO_ROOT / "docs" / "images"
CHROMIUM = os.environ.get("MCMETRICS_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--no-first-run",
]
COMPARISON_EXPERIMENT = "loss comparison"
#: Generous: on 2 busy cores the UI's charts load one by one.
TIMEOUT_MS = 120_000
#: The UI shows a spinner or a skeleton while it loads data; a picture waits until none is left.
LOADING = ", ".join(
    (
        "[role=progressbar]",
        "[class*=skeleton]",
        "[class*=Skeleton]",
        "[class*=spin-spinning]",
        "[aria-busy=true]",
    )
)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def tracking_server(folder: Path):
    """``mlflow server`` on a free port of 127.0.0.1, its store and artifacts in ``folder``."""
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable, "-m", "mlflow", "server",
            "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
            "--artifacts-destination", str(folder / "artifacts"),
            "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        ],
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        stdout=open(folder / "server.log", "a"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2):
                    break
            except OSError as error:
                if server.poll() is not None or time.monotonic() > deadline:
                    log_file = folder / "server.log"
                    raise SystemExit(f"mlflow server did not start: see {log_file}") from error
                time.sleep(0.5)
        yield uri
    finally:
        server.terminate()
        server.wait(timeout=60)


def mlflow_run(uri: str, *arguments: str) -> None:
    """``mlflow run . --env-manager local ARGUMENTS`` with this Python's environment (the
    MLproject's command says ``python``)."""
    command = ["mlflow", "run", ".", "--env-manager", "local", *arguments]
    log(" ".join(command))
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    environment = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PATH": path}
    subprocess.run(command, cwd=REPO_ROOT, env=environment, check=True)


def train(uri: str) -> None:
    mlflow_run(uri)
    mlflow_run(uri, "-e", "compare", "--experiment-name", COMPARISON_EXPERIMENT)


def the_runs(uri: str):
    """The default fit (the newest run of the Default experiment), the comparison's parent run
    and its experiment."""
    import mlflow

    client = mlflow.MlflowClient(uri)
    default = client.search_runs(["0"], order_by=["attributes.start_time DESC"], max_results=1)
    comparison = client.get_experiment_by_name(COMPARISON_EXPERIMENT)
    if not default or comparison is None:
        raise SystemExit("the work folder holds no gallery runs: run without --reuse")
    parent = client.search_runs(
        [comparison.experiment_id], "tags.mlflow.parentRunId IS NULL", max_results=1
    )[0]
    return client, default[0], comparison.experiment_id, parent


def drawn(page) -> None:
    """Wait until the page has no loading indicator left (checked twice, a frame apart: the UI
    replaces one indicator by the next while it fetches)."""
    page.wait_for_function(
        "selector => new Promise(done => requestAnimationFrame(() => requestAnimationFrame("
        "  () => done(document.querySelectorAll(selector).length === 0))))",
        arg=LOADING,
        timeout=TIMEOUT_MS,
    )


def charts_drawn(page, minimum: int) -> None:
    """At least ``minimum`` charts with their lines drawn, and nothing loading."""
    page.wait_for_function(
        "minimum => document.querySelectorAll('.js-plotly-plot .scatterlayer path.js-line')"
        "  .length >= minimum",
        arg=minimum,
        timeout=TIMEOUT_MS,
    )
    drawn(page)


def open_model_training(page, uri: str, path: str) -> None:
    """Open ``path`` as a newcomer who picked "Model training" on the UI's first screen (a
    fresh profile starts in its GenAI mode with a feature tour and an assistant panel; the
    tests' pages use it too)."""
    page.goto(f"{uri}/#/experiments")
    page.get_by_text("Model training", exact=True).wait_for()
    tour = page.get_by_role("button", name="Got it")
    if tour.count():
        tour.click()
    page.get_by_text("Model training", exact=True).click()
    page.goto(f"{uri}/#{path}")
    close_assistant(page)


def close_assistant(page) -> None:
    assistant = page.get_by_label("Close", exact=True)
    if assistant.count():
        assistant.first.click()


def shoot(page, name: str) -> None:
    page.screenshot(path=IMAGES / name)
    log(f"wrote docs/images/{name}")


def logged_png(page, client, run_id: str, path: str, folder: Path) -> None:
    """Wait until the page shows the logged PNG ``path`` itself: an image of its exact size,
    fully loaded."""
    from PIL import Image

    with Image.open(client.download_artifacts(run_id, path, str(folder))) as logged:
        size = list(logged.size)
    page.wait_for_function(
        "([width, height]) => [...document.images].some(image => image.complete"
        "  && image.naturalWidth === width && image.naturalHeight === height)",
        arg=size,
        timeout=TIMEOUT_MS,
    )
    drawn(page)


def html_artifact(page, client, run_id: str, path: str, folder: Path, ready: str) -> None:
    """Open an HTML artifact on its own, as the Artifacts tab's "open in a new tab" does."""
    local = client.download_artifacts(run_id, path, str(folder))
    page.goto(Path(local).as_uri())
    page.wait_for_selector(ready, timeout=TIMEOUT_MS)
    drawn(page)


def pictures(uri: str, folder: Path) -> None:
    from playwright.sync_api import sync_playwright

    client, default, experiment_id, parent = the_runs(uri)
    run_path = f"/experiments/{default.info.experiment_id}/runs/{default.info.run_id}"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True
        )
        # A new context is a fresh profile: no layout the UI could have remembered.
        page = browser.new_context(viewport={"width": 1440, "height": 900}).new_page()
        page.set_default_timeout(TIMEOUT_MS)

        open_model_training(page, uri, run_path)
        page.get_by_role("tab", name="Model metrics").click()
        charts_drawn(page, 6)
        shoot(page, "ui_run_charts.png")

        page.get_by_role("tab", name="Artifacts").click()
        page.get_by_text("mcmetrics", exact=True).first.click()
        page.get_by_text("confusion_matrix.png", exact=True).click()
        logged_png(page, client, default.info.run_id, "mcmetrics/confusion_matrix.png", folder)
        shoot(page, "ui_run_confusion_matrix.png")

        open_model_training(page, uri, f"/experiments/{experiment_id}/runs?compareRunsMode=CHART")
        page.locator("[data-component-id*=runnamecellrenderer]").first.click()  # the children
        charts_drawn(page, 6)
        shoot(page, "ui_experiment_charts.png")

        html_artifact(
            page, client, default.info.run_id, "mcmetrics/dashboard.html", folder, "#matrix td"
        )
        shoot(page, "dashboard_10.png")
        html_artifact(
            page,
            client,
            parent.info.run_id,
            "comparison/comparison.html",
            folder,
            "#comparison tbody tr",
        )
        shoot(page, "comparison_page.png")
        browser.close()
    comparison_png = client.download_artifacts(
        parent.info.run_id, "comparison/comparison.png", str(folder)
    )
    (IMAGES / "comparison.png").write_bytes(Path(comparison_png).read_bytes())
    log("wrote docs/images/comparison.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reuse", type=Path, help="the work folder of an earlier call")
    arguments = parser.parse_args()
    folder = arguments.reuse or Path(tempfile.mkdtemp(prefix="mcmetrics-gallery-"))
    log(f"work folder {folder}")
    IMAGES.mkdir(parents=True, exist_ok=True)
    with tracking_server(folder) as uri:
        if arguments.reuse is None:
            train(uri)
        pictures(uri, folder)


if __name__ == "__main__":
    main()
