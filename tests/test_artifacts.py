"""Artifacts in the run: per-epoch JSON, images, final PNGs and reports (real fit, real server)."""

from __future__ import annotations

import io
import json
import threading

import keras
import mlflow
import numpy as np
import pytest
from matplotlib.figure import Figure
from PIL import Image
from sklearn import metrics as skm
from test_training import per_class_table

import mlflow_mcmetrics
from mlflow_mcmetrics import functional, plots, report
from mlflow_mcmetrics.child import ChildPool
from mlflow_mcmetrics.render import RENDERER, draw

pytestmark = pytest.mark.slow


def train_digits(digits, epochs, learning_rate=0.01, **autolog_kwargs):
    x, y, xv, yv = digits
    mlflow_mcmetrics.autolog(**autolog_kwargs)
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate), loss="sparse_categorical_crossentropy"
    )
    model.fit(x, y, validation_data=(xv, yv), epochs=epochs, batch_size=64, verbose=0)
    return model, mlflow.last_active_run().info.run_id


def load(run_id, path):
    return mlflow.artifacts.load_dict(f"runs:/{run_id}/{path}")


@pytest.mark.parametrize(
    "epochs, learning_rate", [(40, 0.01), (1, 0.001)], ids=["trained", "untrained"]
)
def test_last_epoch_json_matches_sklearn(tracking, digits, epochs, learning_rate):
    client, _ = tracking
    _, _, xv, yv = digits
    model, run_id = train_digits(digits, epochs, learning_rate, log_every_n_epochs=7)
    last = f"mcmetrics/epochs/{epochs - 1:04d}"
    scores = model.predict(xv, verbose=0)

    matrix = load(run_id, f"{last}/val_confusion_matrix.json")
    assert matrix["split"] == "val" and matrix["epoch"] == epochs - 1
    np.testing.assert_array_equal(matrix["matrix"], skm.confusion_matrix(yv, scores.argmax(1)))

    curves = load(run_id, f"{last}/val_pr_curves.json")
    assert len(curves["thresholds"]) == 4096 and curves["thresholds"][1] == pytest.approx(1 / 4096)
    table = per_class_table(run_id, epochs - 1, "val")
    for label in range(10):
        curve = curves["curves"][str(label)]
        exact = skm.average_precision_score(yv == label, scores[:, label])
        lower, upper = curve["average_precision_bounds"]
        assert lower - 1e-9 <= exact <= upper + 1e-9, (label, lower, exact, upper)
        if epochs > 1:
            assert curve["average_precision"] == pytest.approx(exact, abs=0.01)
        assert table[str(label)]["ap"] == curve["average_precision"]
        assert len(curve["precision"]) == len(curve["recall"]) == len(curve["thresholds"]) + 1
        assert set(curve["thresholds"]) <= set(curves["thresholds"])

    # Artifacts every 7 epochs, and always for the last epoch.
    logged_epochs = sorted(
        f.path.rsplit("/", 1)[-1] for f in client.list_artifacts(run_id, "mcmetrics/epochs")
    )
    expected = sorted({f"{e:04d}" for e in range(0, epochs, 7)} | {f"{epochs - 1:04d}"})
    assert logged_epochs == expected


def test_final_pngs_reports_and_stepped_images(tracking, digits):
    client, _ = tracking
    _, run_id = train_digits(digits, 3)
    run = client.get_run(run_id)
    local = client.download_artifacts(run_id, "mcmetrics")
    for name in (
        "confusion_matrix.png",
        "pr_curves.png",
        "roc_curves.png",
        "calibration.png",
        "f1_by_epoch.png",
    ):
        with Image.open(f"{local}/{name}") as image:
            assert image.format == "PNG" and image.size[0] > 300
    document = json.loads(open(f"{local}/classification_report.json").read())
    assert document["epoch"] == 2 and document["split"] == "val"
    table = per_class_table(run_id, 2, "val")
    for row in document["classes"]:
        for name in ("precision", "recall", "f1"):
            assert row[name] == run.data.metrics[f"val_{name}/{row['name']}"]
        for name in ("ap", "roc_auc"):  # per-class tables, not keys, below class_keys="all"
            assert row[name] == table[row["name"]][name]
    for name in ("map", "roc_auc_macro", "balanced_accuracy", "mcc", "cohen_kappa", "ece"):
        assert document[name] == run.data.metrics[f"val_{name}"]
    markdown = open(f"{local}/classification_report.md").read()
    assert "| macro |" in markdown and "Most confused pairs" in markdown
    assert "| Matthews correlation |" in markdown and "ROC AUC tie interval" in markdown
    final = {f.path.rsplit("/", 1)[1] for f in client.list_artifacts(run_id, "mcmetrics")}
    assert "dashboard.html" in final and "thresholds.json" not in final  # multiclass
    images = [f.path for f in client.list_artifacts(run_id, "images")]
    # A fit shorter than AUTO_ARTIFACT_INTERVAL_S: the last epoch's stepped images only.
    assert any("val_plots~confusion_matrix+step+2" in path for path in images)
    assert any("val_plots~pr_curves+step+2" in path for path in images)
    assert not any("+step+0" in path for path in images)


def test_figures_are_drawn_after_fit_returns_and_flush_waits_for_them(
    tracking, digits, monkeypatch
):
    """With wait_for_figures=False, fit() ends its run with every metric and report
    delivered but does not wait for the end-of-training figures; mlflow_mcmetrics.flush()
    (and the interpreter's exit) does."""
    drawing_allowed = threading.Event()
    real_draw = RENDERER.call

    def held_back(request):
        drawing_allowed.wait(60)
        return real_draw(request)

    monkeypatch.setattr(RENDERER, "call", held_back)
    client, _ = tracking
    _, run_id = train_digits(digits, 2, wait_for_figures=False)

    def logged():
        return {f.path.rsplit("/", 1)[1] for f in client.list_artifacts(run_id, "mcmetrics")}

    assert client.get_run(run_id).info.status == "FINISHED"
    assert {"classification_report.json", "dashboard.html", "labels.json"} <= logged()
    assert not [name for name in logged() if name.endswith(".png")]
    assert len(client.get_metric_history(run_id, "val_f1/3")) == 2
    drawing_allowed.set()
    mlflow_mcmetrics.flush()
    pngs = {"confusion_matrix", "pr_curves", "roc_curves", "calibration", "f1_by_epoch"}
    assert {f"{name}.png" for name in pngs} <= logged()
    images = [f.path for f in client.list_artifacts(run_id, "images")]
    assert any("val_plots~confusion_matrix+step+1" in path for path in images)


def test_pr_curves_false_turns_off_everything_that_needs_histograms(tracking, digits):
    client, _ = tracking
    _, run_id = train_digits(digits, 2, pr_curves=False)
    keys = client.get_run(run_id).data.metrics
    for name in ("ap/", "roc_auc", "map", "ece", "threshold"):
        assert not [key for key in keys if name in key], name
    for name in ("balanced_accuracy", "mcc", "cohen_kappa"):  # from the confusion matrix
        assert f"val_{name}" in keys
    files = [f.path for f in client.list_artifacts(run_id, "mcmetrics/epochs/0001")]
    assert [path.rsplit("/", 1)[1] for path in files] == [
        "train_confusion_matrix.json",
        "train_per_class.json",
        "val_confusion_matrix.json",
        "val_per_class.json",
    ]
    final = {f.path.rsplit("/", 1)[1] for f in client.list_artifacts(run_id, "mcmetrics")}
    assert {"roc_curves.png", "calibration.png", "pr_curves.png"}.isdisjoint(final)
    assert {"confusion_matrix.png", "dashboard.html"} <= final


def test_multilabel_writes_one_two_by_two_per_label(tracking):
    client, _ = tracking
    rng = np.random.default_rng(0)
    labels = (rng.random((600, 6)) < 0.2).astype("float32")
    features = labels + rng.normal(0, 0.5, labels.shape)
    mlflow_mcmetrics.autolog(class_names=list("abcdef"))
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(6, activation="sigmoid")])
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="binary_crossentropy")
    model.fit(
        features[:400],
        labels[:400],
        validation_data=(features[400:], labels[400:]),
        epochs=2,
        verbose=0,
    )
    run_id = mlflow.last_active_run().info.run_id
    matrix = load(run_id, "mcmetrics/epochs/0001/val_confusion_matrix.json")
    predicted = (model.predict(features[400:], verbose=0) > 0.5).astype(int)
    np.testing.assert_array_equal(
        matrix["matrix"], skm.multilabel_confusion_matrix(labels[400:], predicted)
    )
    assert np.asarray(matrix["matrix"]).shape == (6, 2, 2)


def test_report_json_is_what_was_logged():
    rng = np.random.default_rng(3)
    y_true = rng.integers(0, 4, 200)
    scores = rng.dirichlet(np.ones(4), 200)
    state = functional.state_from_predictions(y_true, scores, num_bins=50)
    names = ["cat", "dog", "bird", "fish"]
    document = report.classification_report(state, names)
    reference = skm.classification_report(
        y_true, scores.argmax(1), output_dict=True, zero_division=0
    )
    for row in document["classes"]:
        assert row["f1"] == pytest.approx(reference[str(row["index"])]["f1-score"], abs=1e-12)
    assert document["averages"]["weighted"]["f1"] == pytest.approx(
        reference["weighted avg"]["f1-score"], abs=1e-12
    )
    pairs = document["most_confused"]
    matrix = state.confusion_matrix.copy()
    np.fill_diagonal(matrix, 0)
    assert pairs[0]["count"] == matrix.max()


@pytest.mark.parametrize("num_classes", [2, 30, 1000])
def test_plots_scale_from_2_to_1000_classes(num_classes):
    rng = np.random.default_rng(num_classes)
    y_true = rng.integers(0, num_classes, 5 * num_classes)
    scores = rng.dirichlet(np.ones(num_classes), len(y_true))
    state = functional.state_from_predictions(y_true, scores, num_bins=64)
    names = [f"class {i}" for i in range(num_classes)]
    precision, recall, _ = functional.precision_recall_curve_from_histogram(state.score_histogram)
    ap, _, _ = functional.average_precision_from_histogram(state.score_histogram)
    figures = [
        plots.plot_confusion_matrix(state.confusion_matrix, names),
        plots.plot_pr_curves(
            precision,
            recall,
            ap,
            names,
            prevalence=np.full(num_classes, 1 / num_classes),
            operating_points=report.operating_points(state, range(num_classes)),
        ),
        plots.plot_f1_by_epoch(rng.random((5, num_classes)), names),
    ]
    for figure in figures:
        assert isinstance(figure, Figure)
        pixels = np.asarray(Image.open(io.BytesIO(plots.figure_to_png(figure))))
        assert pixels.ndim == 3 and pixels.shape[2] == 4 and pixels.shape[0] < 2500
    texts = len(figures[0].axes[0].texts)
    assert texts == (num_classes**2 if num_classes <= plots.ANNOTATE_MAX_CLASSES else 0)
    visible_panels = [axis for axis in figures[1].axes if axis.get_visible()]
    assert len(visible_panels) == min(num_classes, plots.PR_PANELS_MAX)
    # Every count is drawn: each image cell sums a block of classes beyond MATRIX_CELLS_MAX.
    block = -(-num_classes // plots.MATRIX_CELLS_MAX)
    cells = figures[0].axes[0].images[0].get_array()
    assert cells.shape == (-(-num_classes // block),) * 2
    last = len(cells) - 1
    for row, column in [(0, 0), (0, last), (last, last), (last // 2, last // 2)]:
        rows, columns = (slice(index * block, (index + 1) * block) for index in (row, column))
        assert cells[row, column] == state.confusion_matrix[rows, columns].sum()
    assert cells.sum() == state.confusion_matrix.sum()


def _render_request():
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 5, 200)
    state = functional.state_from_predictions(y_true, rng.dirichlet(np.ones(5), 200), num_bins=64)
    return dict(
        figure="plot_state",
        state=state,
        scores=functional.classification_scores(state),
        class_names=list("abcde"),
        labels=list(range(5)),
        zero_division=0.0,
        title="epoch 0",
        confusion_matrix=True,
    )


def _renderer():
    return ChildPool(
        "mlflow_mcmetrics.render:draw", 19, ["mlflow_mcmetrics.plots"], 2, "draws its images"
    )


def test_the_render_process_draws_what_this_process_draws_and_survives_a_kill():
    renderer = _renderer()
    try:
        images = renderer.call(_render_request())
        expected = draw(_render_request())
        assert sorted(images) == ["confusion_matrix", "pr_curves"]
        assert all(images[stem] == expected[stem] for stem in expected)
        renderer._children[0]._process.kill()
        renderer._children[0]._process.wait()
        again = renderer.call(_render_request())  # a new child is started
        assert again["confusion_matrix"] == expected["confusion_matrix"]
    finally:
        renderer.close()


def test_images_are_drawn_here_when_the_render_process_cannot_run(monkeypatch):
    monkeypatch.setattr("sys.executable", "/bin/false")  # the child exits at once
    renderer = _renderer()
    with pytest.warns(UserWarning, match="draws its images in this process"):
        images = renderer.call(_render_request())
    assert images["pr_curves"] == draw(_render_request())["pr_curves"]
