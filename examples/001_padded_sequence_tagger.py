"""Seed 001: F1 for a sequence tagger with zero padding.

Masked timesteps (mask_zero=True) never count, and ignore_class=0 keeps the padding tag out
of every per-class value and average: no hand-written padded F1, no model.predict per epoch.

    python examples/001_padded_sequence_tagger.py [--epochs 10]
"""

import argparse

import keras
import mlflow

import mlflow_mcmetrics
from mlflow_mcmetrics.datasets import padded_sequences

parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int, default=10)
args = parser.parse_args()

tokens, tags = padded_sequences(num_sequences=800, num_tags=6)  # 0 = padding in both
split = 640

mlflow_mcmetrics.autolog(ignore_class=0, class_names=["<pad>", "O", "B", "I", "E", "S"])
model = keras.Sequential(
    [
        keras.Input((tokens.shape[1],)),
        keras.layers.Embedding(int(tokens.max()) + 1, 32, mask_zero=True),
        keras.layers.LSTM(32, return_sequences=True),
        keras.layers.Dense(6, activation="softmax"),
    ]
)
model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy")
model.fit(
    tokens[:split],
    tags[:split],
    validation_data=(tokens[split:], tags[split:]),
    epochs=args.epochs,
    verbose=2,
)
print(
    "val macro F1 without padding:", round(mlflow.last_active_run().data.metrics["val_f1_macro"], 3)
)
