"""Seed 003: per-class precision-recall curves of a softmax classifier, every epoch.

The metric keeps per-class score histograms, so each epoch's one-vs-rest PR curves and AP
come without another pass over the data; the plot marks the operating point that argmax
actually uses (which is not a point you choose with a threshold).

    python examples/003_per_class_pr_curves.py [--epochs 15]
"""

import argparse

import keras
import mlflow

import mlflow_mcmetrics
from mlflow_mcmetrics.cli import build_cnn
from mlflow_mcmetrics.datasets import load

parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int, default=15)
args = parser.parse_args()

data = load("digits", imbalance_ratio=10, seed=1)
mlflow_mcmetrics.autolog(class_names=[f"digit {c}" for c in data.class_names], pr_curves=True)
model = build_cnn(data.x_train.shape[1:], 10, seed=1)
model.compile(
    keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True)
)
model.fit(
    data.x_train,
    data.y_train,
    validation_data=(data.x_val, data.y_val),
    epochs=args.epochs,
    verbose=2,
)

run = mlflow.last_active_run()
history = mlflow_mcmetrics.per_class_history(run.info.run_id)
last = history[(history.epoch == history.epoch.max()) & (history.split == "val")]
print("val AP per class:", dict(zip(last["class"], last["ap"].round(3), strict=True)))
print(
    "PR curves:",
    mlflow.artifacts.download_artifacts(
        run_id=run.info.run_id, artifact_path="mcmetrics/pr_curves.png"
    ),
)
