"""The ``mcmetrics`` command and the MLproject's entry points."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

__all__ = ["build_cnn", "main", "train"]


def build_cnn(input_shape: Sequence[int], num_classes: int, seed: int):
    """A small CNN sized to the input: Conv(32)-Pool-Conv(64)-[Pool]-GAP-Dense, logits out."""
    import keras

    keras.utils.set_random_seed(seed)
    layers = [keras.Input(tuple(input_shape)), keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
              keras.layers.MaxPooling2D()]
    layers.append(keras.layers.Conv2D(64, 3, padding="same", activation="relu"))
    if min(input_shape[:2]) >= 16:
        layers.append(keras.layers.MaxPooling2D())
    layers += [keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(num_classes)]
    return keras.Sequential(layers, name="imbalanced_cnn")


def train(
    dataset: str = "digits",
    imbalance_ratio: float = 20.0,
    epochs: int = 60,
    batch_size: int = 32,
    learning_rate: float = 3e-3,
    seed: int = 0,
    verbose: int = 2,
) -> str:
    """Train the imbalanced CNN with ``mlflow_mcmetrics.autolog()`` on; returns the run id."""
    import keras
    import mlflow
    import numpy as np

    import mlflow_mcmetrics
    from mlflow_mcmetrics import datasets, functional
    from mlflow_mcmetrics.callback import epoch_values, find_metric
    from mlflow_mcmetrics.naming import class_key_components

    data = datasets.load(dataset, imbalance_ratio=imbalance_ratio, seed=seed)
    counts = np.bincount(data.y_train, minlength=data.num_classes)
    print(f"{dataset}: train class counts {counts.tolist()} (ratio {imbalance_ratio:g}), "
          f"val {len(data.y_val)}, test {len(data.y_test)}", flush=True)

    mlflow_mcmetrics.autolog(class_names=data.class_names)
    model = build_cnn(data.x_train.shape[1:], data.num_classes, seed)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    with mlflow.start_run() as run:
        params = {"dataset": dataset, "imbalance_ratio": imbalance_ratio, "epochs": epochs,
                  "batch_size": batch_size, "learning_rate": learning_rate, "seed": seed}
        # `mlflow run` has logged the entry point's parameters already, as the text it was given.
        logged = mlflow.get_run(run.info.run_id).data.params
        mlflow.log_params({key: value for key, value in params.items() if key not in logged})
        mlflow.log_dict(dict(zip(data.class_names, counts.tolist())), "train_class_counts.json")
        model.fit(data.x_train, data.y_train, validation_data=(data.x_val, data.y_val),
                  epochs=epochs, batch_size=batch_size, verbose=verbose)
        model.evaluate(data.x_test, data.y_test, verbose=0)
        metric = find_metric(model)
        state, _ = metric.state()  # evaluate() left the test split's state in the metric
        labels = metric.scored_labels
        scores = functional.classification_scores(state, labels=labels, zero_division=metric.zero_division)
        test = epoch_values(scores, labels, class_key_components(data.class_names), "test_")
        mlflow.log_metrics(test)
        print(f"test macro F1 {test['test_f1_macro']:.3f}; per class "
              + json.dumps({n: round(test[f'test_f1/{k}'], 3)
                            for n, k in zip(data.class_names, class_key_components(data.class_names))}),
              flush=True)
        return run.info.run_id


def _count(text: str) -> int:
    """An integer that MLproject may have passed as float text ("60.0")."""
    value = float(text)
    if value != int(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}")
    return int(value)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mcmetrics", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    train_parser = commands.add_parser("train", help="train the imbalanced CNN (the MLproject's main entry)")
    train_parser.add_argument("--dataset", default="digits",
                              help="digits (embedded), fashion_mnist, cifar10 or npz:PATH")
    train_parser.add_argument("--imbalance-ratio", type=float, default=20.0,
                              help="largest / smallest training class (1 = as loaded)")
    train_parser.add_argument("--epochs", type=_count, default=60)
    train_parser.add_argument("--batch-size", type=_count, default=32)
    train_parser.add_argument("--learning-rate", type=float, default=3e-3)
    train_parser.add_argument("--seed", type=_count, default=0)
    args = parser.parse_args(argv)
    if args.command == "train":
        train(args.dataset, args.imbalance_ratio, args.epochs, args.batch_size, args.learning_rate, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
