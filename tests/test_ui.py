"""End to end: the MLproject's loss comparison on a PostgreSQL-backed tracking server, the same
values as on SQLite, and what a person sees of it in the MLflow UI (headless Chromium).

Needs Debian's ``postgresql`` and ``chromium`` and the ``playwright`` package; without them
these tests are skipped, unless ``MCMETRICS_E2E=required`` (set by ``.ci/run``) makes that a
failure. Screenshots go to ``build/ui/``.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from conftest import REPO_ROOT, _free_port
from PIL import Image
from test_project import mlflow_run

# The UI's navigation, shared with the script that takes the documentation's pictures.
sys.path.insert(0, str(REPO_ROOT / "docs"))
from make_gallery import close_assistant, open_model_training  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

CHROMIUM = os.environ.get("MCMETRICS_CHROMIUM", "/usr/bin/chromium")
# The flags that keep Chromium off the network it cannot reach here (and out of first-run UI).
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOTS = REPO_ROOT / "build" / "ui"
LOSSES = ("cce", "logit_adjusted")


def require(available: bool, what: str) -> None:
    """Skip when ``what`` is missing; fail instead where CI promised it (MCMETRICS_E2E=required)."""
    if available:
        return
    message = f"{what} is missing: install it to run the end-to-end tests (see .ci/run)"
    if os.environ.get("MCMETRICS_E2E") == "required":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="module")
def postgres_server(tmp_path_factory):
    """``scripts/tracking-server.sh``: PostgreSQL and ``mlflow server`` on 127.0.0.1."""
    require(bool(glob.glob("/usr/lib/postgresql/*/bin/initdb")), "Debian's postgresql")
    require(
        shutil.which("psql") is not None or bool(glob.glob("/usr/lib/postgresql/*/bin/psql")),
        "psql",
    )
    try:
        import psycopg  # noqa: F401
    except ImportError:
        require(False, "the psycopg driver (pip install -e '.[server]')")
    root = tmp_path_factory.mktemp("tracking-server")
    # Run as root, PostgreSQL runs as `postgres`, which cannot enter pytest's 0700 folders.
    cluster = Path(tempfile.mkdtemp(prefix="mcmetrics-pg-"))
    cluster.chmod(0o755)
    port = _free_port()
    env = dict(
        os.environ,
        MCMETRICS_SERVER_DIR=str(root),
        MCMETRICS_PG_DATA=str(cluster / "data"),
        MLFLOW_PORT=str(port),
        PGPORT=str(_free_port()),
        MLFLOW_WORKERS="1",
        PYTHON=sys.executable,
    )
    script = [str(REPO_ROOT / "scripts" / "tracking-server.sh")]
    started = subprocess.run(
        [*script, "start"], env=env, capture_output=True, text=True, timeout=300
    )
    assert started.returncode == 0, started.stderr
    assert started.stdout.strip() == f"export MLFLOW_TRACKING_URI=http://127.0.0.1:{port}"
    yield f"http://127.0.0.1:{port}"
    subprocess.run([*script, "stop"], env=env, capture_output=True, timeout=120)
    shutil.rmtree(cluster, ignore_errors=True)


def run_comparison(tracking_uri: str, cwd: Path) -> tuple[str, dict[str, mlflow.entities.Run]]:
    """``mlflow run . -e compare`` with two losses and 2 epochs into a new experiment; returns the
    experiment id and the child runs by loss."""
    client = mlflow.MlflowClient(tracking_uri)
    # Unique: the session's SQLite server may hold a "loss comparison" of the docs' examples.
    experiment_id = client.create_experiment(f"loss comparison {time.time_ns()}")
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(tracking_uri)
    try:
        mlflow_run(experiment_id, "compare", cwd, losses=",".join(LOSSES), epochs=2)
    finally:
        mlflow.set_tracking_uri(previous)
    children = {
        run.data.params["loss"]: run
        for run in client.search_runs([experiment_id])
        if "mlflow.parentRunId" in run.data.tags
    }
    assert sorted(children) == sorted(LOSSES)
    return experiment_id, children


@pytest.fixture(scope="module")
def postgres_comparison(postgres_server, tmp_path_factory):
    return run_comparison(postgres_server, tmp_path_factory.mktemp("compare-postgres"))


def metric_histories(
    tracking_uri: str, run: mlflow.entities.Run
) -> dict[str, list[tuple[int, float]]]:
    client = mlflow.MlflowClient(tracking_uri)
    return {
        key: sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
        for key in run.data.metrics
    }


def test_postgres_and_sqlite_stores_hold_identical_values(
    postgres_server, postgres_comparison, mlflow_server, tmp_path
):
    _, on_postgres = postgres_comparison
    _, on_sqlite = run_comparison(mlflow_server, tmp_path)
    for loss in LOSSES:
        postgres_values = metric_histories(postgres_server, on_postgres[loss])
        sqlite_values = metric_histories(mlflow_server, on_sqlite[loss])
        assert "val_f1/9" in postgres_values and len(postgres_values["val_f1/9"]) == 2
        assert postgres_values == sqlite_values  # every key, step and float, exactly
        assert on_postgres[loss].data.params == on_sqlite[loss].data.params


@pytest.fixture(scope="module")
def browser():
    require(os.path.exists(CHROMIUM), f"Chromium ({CHROMIUM})")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        require(False, "playwright (pip install playwright; no browser download needed)")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True
        )
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1600, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(60_000)  # charts load lazily on 2 busy cores
    yield page
    context.close()


def show_child_runs(page, child_name: str) -> None:
    """Expand the parent run (the UI remembers whether it was expanded)."""
    page.locator("[data-component-id*=runnamecellrenderer]").first.wait_for()
    if not page.get_by_text(child_name, exact=True).is_visible():
        page.locator("[data-component-id*=runnamecellrenderer]").first.click()
    page.get_by_text(child_name, exact=True).wait_for()


def choose_option(page, combobox, option: str) -> None:
    combobox.click()
    page.keyboard.type(option)
    page.locator(f".du-bois-light-select-item-option[title='{option}']").click()


def test_ui_compares_the_losses_per_class(page, postgres_server, postgres_comparison):
    experiment_id, children = postgres_comparison
    open_model_training(page, postgres_server, f"/experiments/{experiment_id}/runs")
    # `compare` nests one run per loss under a parent run: expand it, select both, compare.
    show_child_runs(page, f"{LOSSES[0]} seed 0")
    for loss in LOSSES:
        page.get_by_role("row").filter(has_text=f"{loss} seed 0").get_by_role(
            "checkbox"
        ).first.check()
    page.get_by_role("button", name="Compare").click()
    page.get_by_text("Comparing 2 Runs from 1 Experiment").wait_for()
    close_assistant(page)
    for loss in LOSSES:
        page.get_by_text(f"{loss} seed 0", exact=True).first.wait_for()
    # Parallel coordinates: the loss against the test split's macro F1 and its rarest classes' F1.
    # The UI preselects the first metric the server lists for both runs; that order is the
    # store's, so the preselection is read, not assumed.
    parameters, metrics = page.get_by_role("combobox").all()
    assert page.locator(".du-bois-light-select-selection-item").filter(has_text="loss").count() == 1
    metric_select = metrics.locator(
        "xpath=ancestor::div[contains(concat(' ', @class, ' '), ' du-bois-light-select ')][1]"
    )
    chosen = metric_select.locator(".du-bois-light-select-selection-item")
    chosen.first.wait_for()
    keys = ("test_f1_macro", "test_f1/8", "test_f1/9")
    dropped = set(chosen.all_text_contents()) - set(keys)
    for key in keys:
        choose_option(page, metrics, key)
    page.keyboard.press("Escape")
    for key in dropped:
        chosen.filter(has=page.get_by_text(key, exact=True)).locator(
            ".du-bois-light-select-selection-item-remove"
        ).click()
    for key in keys:
        page.locator(".pcp-plot text", has_text=key).first.wait_for()
    axis_titles = set(page.locator(".pcp-plot text").all_text_contents())
    assert not dropped & axis_titles, (dropped, axis_titles)
    page.screenshot(path=SCREENSHOTS / "compare_runs.png")

    # The runs' chart view: one section per metric prefix, one chart per class, a line per run.
    open_model_training(
        page, postgres_server, f"/experiments/{experiment_id}/runs?compareRunsMode=CHART"
    )
    show_child_runs(page, f"{LOSSES[0]} seed 0")
    page.get_by_placeholder("Search metric charts").fill("val_f1/")
    section = page.get_by_text("val_f1", exact=True)  # the section header, "val_f1 (10)"
    section.locator("xpath=..").filter(has_text="(10)").wait_for()
    first_chart = page.get_by_text("val_f1/0", exact=True)
    first_chart.wait_for()
    box = first_chart.bounding_box()
    page.mouse.move(box["x"], box["y"])
    page.mouse.wheel(0, 3000)  # charts are only rendered while they are scrolled into view
    page.get_by_text("val_f1/9", exact=True).wait_for()
    page.mouse.wheel(0, -3000)
    for class_name in ("0", "1", "2"):  # the top row drawn again, a line per run in each legend
        for loss in LOSSES:
            page.get_by_text(f"{loss} seed 0 (val_f1/{class_name})").wait_for(state="attached")
    page.screenshot(path=SCREENSHOTS / "val_f1_charts.png")


def test_ui_shows_a_runs_confusion_matrix(page, postgres_server, postgres_comparison, tmp_path):
    experiment_id, children = postgres_comparison
    run_id = children["logit_adjusted"].info.run_id
    open_model_training(page, postgres_server, f"/experiments/{experiment_id}/runs/{run_id}")

    page.get_by_role("tab", name="Model metrics").click()
    page.get_by_placeholder("Search metric charts").fill("val_plots/")
    page.get_by_text("val_plots/confusion_matrix", exact=True).wait_for()
    page.get_by_text("val_plots/pr_curves", exact=True).wait_for()
    for stem in ("confusion_matrix", "pr_curves"):  # the stepped images, loaded and drawn
        page.wait_for_function(
            "stem => [...document.images].some(image => image.src.includes(`val_plots~${stem}`)"
            "  && image.complete && image.naturalWidth > 0)",
            arg=stem,
        )
    page.screenshot(path=SCREENSHOTS / "run_image_charts.png")

    page.get_by_role("tab", name="Artifacts").click()
    page.get_by_text("mcmetrics", exact=True).first.click()
    page.get_by_text("confusion_matrix.png", exact=True).click()
    # The preview is the logged PNG itself: an <img> of exactly its size, fully loaded.
    local = mlflow.MlflowClient(postgres_server).download_artifacts(
        run_id, "mcmetrics/confusion_matrix.png", str(tmp_path)
    )
    with Image.open(local) as logged:
        width, height = logged.size
    page.wait_for_function(
        "([width, height]) => [...document.images].some("
        "  image => image.complete && image.naturalWidth === width && image.naturalHeight === "
        "height)",
        arg=[width, height],
    )
    page.screenshot(path=SCREENSHOTS / "run_confusion_matrix.png")


def test_the_per_class_table_opens_as_a_table(page, postgres_server, postgres_comparison):
    """Issue 29: every per-class value of an epoch, as MLflow's Artifacts tab shows the tables
    of ``mlflow.log_table`` (sortable columns), not as JSON text."""
    experiment_id, children = postgres_comparison
    run_id = children["logit_adjusted"].info.run_id
    table = "mcmetrics/epochs/0001/val_per_class.json"
    open_model_training(
        page, postgres_server, f"/experiments/{experiment_id}/runs/{run_id}/artifacts/{table}"
    )
    columns = ["class", "precision", "recall", "f1", "ap", "roc_auc", "group"]
    page.wait_for_function(
        "(columns) => { const shown = [...document.querySelectorAll('th, [role=columnheader]')]"
        "  .map(cell => cell.textContent.trim());"
        "  return columns.every(column => shown.includes(column)); }",
        arg=columns,
    )
    assert not page.get_by_text('"columns"').count()  # a table, not the JSON
    page.screenshot(path=SCREENSHOTS / "run_per_class_table.png")


# -- the interactive pages, inside the MLflow UI -------------------------------------------------
def open_html_artifact(page, uri: str, experiment_id: str, run_id: str, path: str):
    """Open the HTML artifact ``path`` in the run's Artifacts tab with every request that is not
    to the tracking server refused; returns ``(frame, outside, errors)``: the iframe the UI
    shows it in, the URLs refused, and the console errors and uncaught exceptions."""
    outside, errors = [], []

    def only_the_server(route):
        if route.request.url.startswith(uri):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    page.context.route("**/*", only_the_server)
    page.on("console", lambda message: message.type == "error" and errors.append(message.text))
    page.on("pageerror", lambda error: errors.append(str(error)))
    open_model_training(page, uri, f"/experiments/{experiment_id}/runs/{run_id}")
    page.get_by_role("tab", name="Artifacts").click()
    *folders, file_name = path.split("/")
    for folder in folders:
        page.get_by_text(folder, exact=True).first.click()
    errors.clear()  # from here on, only what opening the page does
    page.get_by_text(file_name, exact=True).click()
    frame = page.locator("iframe.mlflow-html-iframe").element_handle().content_frame()
    frame.wait_for_selector("#app h1")
    return frame, outside, errors


def set_epoch(frame, index: int) -> None:
    frame.eval_on_selector(
        "#epoch",
        "(slider, index) => { slider.value = index; slider.dispatchEvent(new Event('input')); }",
        index,
    )
    frame.wait_for_function("index => document.querySelector('#epoch').value == index", arg=index)


def shown_matrix(frame) -> dict[tuple[int, int], str]:
    cells = frame.eval_on_selector_all(
        "#matrix td", "cells => cells.map(c => [+c.dataset.row, +c.dataset.column, c.textContent])"
    )
    return {(row, column): text for row, column, text in cells}


def shown_classes(frame) -> dict[str, dict[str, str]]:
    rows = frame.eval_on_selector_all(
        "#classes tbody tr",
        "rows => rows.map(r => Object.fromEntries([...r.children].map("
        "  c => [c.dataset.key, c.textContent])))",
    )
    return {row["name"]: row for row in rows}


def assert_shows(text: str, value: float) -> None:
    """A number as the page shows it (4 decimals, integers bare) against the logged value."""
    assert float(text) == pytest.approx(value, abs=5e-5 + 1e-9), (text, value)


def test_dashboard_in_the_ui_shows_each_epochs_logged_numbers(
    page, postgres_server, postgres_comparison, tmp_path
):
    experiment_id, children = postgres_comparison
    run_id = children["logit_adjusted"].info.run_id
    client = mlflow.MlflowClient(postgres_server)
    frame, outside, errors = open_html_artifact(
        page, postgres_server, experiment_id, run_id, "mcmetrics/dashboard.html"
    )
    frame.wait_for_selector("#matrix td")
    page.screenshot(path=SCREENSHOTS / "dashboard_in_ui.png")

    def artifact(epoch: int, stem: str) -> dict:
        path = f"mcmetrics/epochs/{epoch:04d}/val_{stem}.json"
        return json.loads(Path(client.download_artifacts(run_id, path, str(tmp_path))).read_text())

    def logged(key: str, epoch: int) -> float:
        (value,) = [m.value for m in client.get_metric_history(run_id, key) if m.step == epoch]
        return value

    # AP and ROC AUC per class are in the per-class history, not step metrics.
    history = pd.read_parquet(
        client.download_artifacts(run_id, "mcmetrics/per_class_history.parquet", str(tmp_path))
    )

    def in_history(score: str, name: str, epoch: int) -> float:
        (value,) = history.query("epoch == @epoch and split == 'val' and `class` == @name")[score]
        return value

    shown = {}
    for epoch in (1, 0):  # the slider starts at the last epoch
        set_epoch(frame, epoch)
        frame.wait_for_function(
            "epoch => document.querySelector('#epoch-label').textContent === `epoch ${epoch}`",
            arg=epoch,
        )
        shown[epoch] = shown_matrix(frame)
        matrix = np.zeros((10, 10))
        for (row, column), count in shown[epoch].items():
            matrix[row, column] = float(count)
        if epoch == 1:  # a short fit logs per-epoch artifacts for its last epoch
            assert matrix.tolist() == artifact(epoch, "confusion_matrix")["matrix"]
        classes = shown_classes(frame)
        for label, name in enumerate(map(str, range(10))):
            recall = matrix[label, label] / matrix[label].sum()
            assert recall == pytest.approx(logged(f"val_recall/{name}", epoch)), name
            assert_shows(classes[name]["f1"], logged(f"val_f1/{name}", epoch))
            for score in ("ap", "roc_auc"):
                assert_shows(classes[name][score], in_history(score, name, epoch))
    assert shown[0] != shown[1]  # training moved the matrix, and the slider shows it
    assert errors == [] and outside == []


def test_comparison_page_in_the_ui_shows_every_loss_and_class(
    page, postgres_server, postgres_comparison
):
    experiment_id, children = postgres_comparison
    client = mlflow.MlflowClient(postgres_server)
    (parent,) = [
        run
        for run in client.search_runs([experiment_id])
        if "mlflow.parentRunId" not in run.data.tags
    ]
    frame, outside, errors = open_html_artifact(
        page, postgres_server, experiment_id, parent.info.run_id, "comparison/comparison.html"
    )
    frame.wait_for_selector("#comparison tbody tr")
    page.screenshot(path=SCREENSHOTS / "comparison_in_ui.png")
    groups = frame.eval_on_selector_all(
        "#comparison tbody tr", "rows => rows.map(r => r.children[0].textContent)"
    )
    assert sorted(groups) == sorted(LOSSES)
    headers = frame.eval_on_selector_all("#comparison th", "cells => cells.map(c => c.textContent)")
    assert all(f"F1 {c}" in headers for c in range(10))
    for loss, child in children.items():
        for c in range(10):
            bar = frame.locator(f"#bars rect[data-group='{loss}'][data-class='{c}']")
            assert float(bar.get_attribute("data-mean")) == pytest.approx(
                child.data.metrics[f"test_f1/{c}"]
            )  # one seed: the mean is the run's value
        assert child.info.run_id in frame.locator("#runs").text_content()
    assert errors == [] and outside == []


def test_dashboard_at_a_thousand_classes_opens_without_errors(browser, tmp_path):
    """1000 classes x 6 epochs (synthetic predictions): the canvas matrix, search, top-k."""
    from _inputs import softmax

    from mlflow_mcmetrics import functional, pages

    rng = np.random.default_rng(0)
    num_classes, labels = 1000, list(range(1000))
    records = []
    for epoch in range(6):
        y_true = np.repeat(np.arange(num_classes), 10)
        logits = rng.normal(size=(len(y_true), num_classes))
        logits[np.arange(len(y_true)), y_true] += (
            np.linspace(5, 0.5, num_classes)[y_true] * (epoch + 1) / 10
        )
        state = functional.state_from_predictions(y_true, softmax(logits), num_bins=4096)
        scores = functional.classification_scores(state)
        records.append(
            pages.epoch_record(epoch, "val", state, scores, labels, curves=epoch in (0, 5))
        )
    names = [f"class {c:04d}" for c in labels]
    path = tmp_path / "dashboard.html"
    path.write_text(
        pages.dashboard_html(
            pages.dashboard_data("1000 classes", names, labels, "multiclass", records)
        )
    )
    context = browser.new_context(viewport={"width": 1600, "height": 1000})
    page = context.new_page()
    errors = []
    page.on("console", lambda message: message.type == "error" and errors.append(message.text))
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(path.as_uri())
    page.wait_for_selector("canvas#matrix")
    assert page.locator("#classes tbody tr").count() == 1000
    page.screenshot(path=SCREENSHOTS / "dashboard_1000.png")
    page.fill("#search", "class 09")
    assert page.locator("#classes tbody tr").count() == 100
    page.fill("#search", "")
    page.select_option("#focus", "worst")
    assert page.locator("#classes tbody tr").count() == 10
    assert page.locator("#matrix td").count() == 100  # 10 x 10: a table with numbers again
    context.close()
    assert errors == []
