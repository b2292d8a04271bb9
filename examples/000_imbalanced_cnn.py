"""Seed 000: a CNN on imbalanced classes, macro precision/recall/F1 every epoch.

Instead of a callback that re-runs model.predict on the validation set and round()s softmax
outputs (wrong for multi-class), autolog() counts a confusion matrix inside the train and test
steps. A class-weighted loss, and early stopping on the exact validation macro F1.

    python examples/000_imbalanced_cnn.py [--epochs 40]
"""

import argparse

import keras
import mlflow
import numpy as np

import mlflow_mcmetrics
from mlflow_mcmetrics import datasets, losses
from mlflow_mcmetrics.cli import build_cnn

parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int, default=40)
args = parser.parse_args()

data = datasets.load("digits", imbalance_ratio=20, seed=0)  # 8x8 images, long-tailed
counts = np.bincount(data.y_train, minlength=data.num_classes)

mlflow_mcmetrics.autolog(class_names=data.class_names)
model = build_cnn(data.x_train.shape[1:], data.num_classes, seed=0)
model.compile(
    optimizer=keras.optimizers.Adam(3e-3),
    loss=losses.get("weighted_cce", counts),
    metrics=["accuracy"],
)
model.fit(
    data.x_train,
    data.y_train,
    validation_data=(data.x_val, data.y_val),
    epochs=args.epochs,
    batch_size=32,
    verbose=2,
    callbacks=[
        keras.callbacks.EarlyStopping(
            monitor="val_f1_macro", mode="max", patience=10, restore_best_weights=True
        )
    ],
)
run = mlflow.last_active_run()
print(
    "val macro F1",
    round(run.data.metrics["val_f1_macro"], 3),
    "| val recall per class",
    [round(run.data.metrics[f"val_recall/{c}"], 2) for c in data.class_names],
)
