"""Render the README's gallery into docs/images/ (run from the repository root).

    python docs/make_gallery.py

10 classes: the MLproject's CNN trained on long-tailed digits (real predictions). 100 classes:
synthetic predictions with class-dependent accuracy, to show how the plots scale.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mlflow_mcmetrics import functional, plots, report

OUT = Path(__file__).resolve().parent / "images"


def save(figure, name):
    figure.savefig(OUT / name, dpi=80)
    print(f"wrote {OUT / name}")


def digits_cnn():
    import keras

    from mlflow_mcmetrics import datasets
    from mlflow_mcmetrics.cli import build_cnn

    data = datasets.load("digits", imbalance_ratio=20, seed=0)
    model = build_cnn(data.x_train.shape[1:], 10, seed=0)
    model.compile(
        keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    f1_by_epoch = []
    for _ in range(30):
        model.fit(data.x_train, data.y_train, epochs=2, batch_size=32, verbose=0)
        scores = keras.ops.convert_to_numpy(keras.ops.softmax(model.predict(data.x_val, verbose=0)))
        state = functional.state_from_predictions(data.y_val, scores, num_bins=4096)
        f1_by_epoch.append(functional.classification_scores(state)["f1"])
    return data.class_names, state, np.array(f1_by_epoch)


def synthetic(num_classes, rng):
    y_true = rng.integers(0, num_classes, 30 * num_classes)
    skill = np.linspace(4.0, 0.2, num_classes)
    logits = rng.normal(size=(len(y_true), num_classes))
    logits[np.arange(len(y_true)), y_true] += skill[y_true]
    scores = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return functional.state_from_predictions(y_true, scores, num_bins=1024)


def pr_figure(state, names, title):
    precision, recall, _ = functional.precision_recall_curve_from_histogram(state.score_histogram)
    scores = functional.classification_scores(state)
    return plots.plot_pr_curves(
        precision,
        recall,
        scores["ap"],
        names,
        prevalence=scores["support"] / state.num_samples,
        operating_points=report.operating_points(state, range(len(names))),
        title=title,
    )


def save_roc_and_calibration(state, names, title, suffix):
    scores = functional.classification_scores(state)
    figures = plots.plot_roc_and_calibration(state, scores, names, range(len(names)), title=title)
    for stem, figure in figures.items():
        save(figure, f"{stem}_{suffix}.png")


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    names, state, f1_by_epoch = digits_cnn()
    save(
        plots.plot_confusion_matrix(
            state.confusion_matrix, names, title="digits, imbalance ratio 20, validation"
        ),
        "confusion_matrix_10.png",
    )
    save(pr_figure(state, names, "digits, imbalance ratio 20, validation"), "pr_curves_10.png")
    save(
        plots.plot_f1_by_epoch(f1_by_epoch, names, title="F1 by class, every 2 epochs"),
        "f1_by_epoch_10.png",
    )
    save_roc_and_calibration(state, names, "digits, imbalance ratio 20, validation", "10")
    rng = np.random.default_rng(0)
    state_100 = synthetic(100, rng)
    names_100 = [f"class {i}" for i in range(100)]
    save(
        plots.plot_confusion_matrix(
            state_100.confusion_matrix, names_100, title="100 classes (synthetic)"
        ),
        "confusion_matrix_100.png",
    )
    save(pr_figure(state_100, names_100, "100 classes (synthetic)"), "pr_curves_100.png")
    save_roc_and_calibration(state_100, names_100, "100 classes (synthetic)", "100")


if __name__ == "__main__":
    main()
