"""The ``mcmetrics`` command; its subcommands are also the MLproject's entry points.

mcmetrics train       --dataset digits --loss logit_adjusted      (entry point main)
mcmetrics compare-losses --losses cce,focal --seeds 2             (entry point compare)
mcmetrics sequence    --epochs 10                                 (entry point sequence)
mcmetrics multilabel  --loss weighted_bce                         (entry point multilabel)
mcmetrics compare     --experiment NAME                           (from existing runs)
mcmetrics sync        --tracking-uri URI                          (replay the outage spool)
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported where used: `mcmetrics --help` stays fast
    import numpy as np

__all__ = [
    "build_cnn",
    "compare_experiment",
    "compare_losses",
    "main",
    "multilabel",
    "sequence",
    "train",
]

MULTICLASS_LOSSES = ("cce", "weighted_cce", "focal", "class_balanced", "logit_adjusted", "ldam")


def build_cnn(input_shape: Sequence[int], num_classes: int, seed: int):
    """A small CNN sized to the input: Conv(32)-Pool-Conv(64)-[Pool]-GAP-Dense, logits out."""
    import keras

    keras.utils.set_random_seed(seed)
    layers = [
        keras.Input(tuple(input_shape)),
        keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(64, 3, padding="same", activation="relu"),
    ]
    if min(input_shape[:2]) >= 16:
        layers.append(keras.layers.MaxPooling2D())
    layers += [keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(num_classes)]
    return keras.Sequential(layers, name="imbalanced_cnn")


def _check_choices(loss_names: Sequence[str], dataset: str) -> None:
    """Unknown loss or dataset names fail at once, listing the valid choices."""
    from mlflow_mcmetrics.datasets import check_dataset_name

    valid = (*MULTICLASS_LOSSES, "balanced_softmax")
    unknown = [name for name in loss_names if name not in valid]
    if unknown or not loss_names:
        raise ValueError(
            f"Unknown loss {', '.join(map(repr, unknown)) or '(none given)'}; choose from "
            f"{', '.join(valid)}."
        )
    check_dataset_name(dataset)


def _log_missing_params(params: dict) -> None:
    """Log ``params`` not already in the active run (``mlflow run`` logs the entry point's
    parameters itself, as the text it was given, and a param cannot change)."""
    import mlflow

    logged = mlflow.get_run(mlflow.active_run().info.run_id).data.params
    mlflow.log_params({key: value for key, value in params.items() if key not in logged})


def _train_class_counts(data) -> np.ndarray:
    """The MLproject's training samples per class, the one source of the loss priors,
    ``train_class_counts.json``, the long-tail groups (``autolog(class_counts=)``, the test
    split's group scores) and the comparison's group columns: the data's counts, which the
    training stream keeps (no resampling)."""
    import numpy as np

    return np.bincount(data.y_train, minlength=data.num_classes)


def _groups_by_key(train_counts: dict[str, int] | None) -> dict[str, str] | None:
    """The long-tail group (many-, medium-, few-shot) of each class key, from its training
    count (:func:`mlflow_mcmetrics.functional.shot_groups`)."""
    if not train_counts:
        return None
    from mlflow_mcmetrics import functional

    grouped = functional.shot_groups(list(train_counts.values()))
    return dict(zip(train_counts, grouped.groups.tolist(), strict=True))


def _test_scores(
    model, x_test, y_test, class_names, groups=None, prefix="test_"
) -> dict[str, float]:
    """Score the test split (the CNN outputs logits: softmax first) and log its ``test_*``
    values, with the long-tail group scores when ``groups`` names each class's group."""
    import mlflow
    from scipy.special import softmax

    from mlflow_mcmetrics import functional
    from mlflow_mcmetrics.naming import class_key_components
    from mlflow_mcmetrics.report import metric_values

    probabilities = softmax(model.predict(x_test, verbose=0).astype("float64"), axis=1)
    state = functional.state_from_predictions(
        y_test, probabilities, num_bins=functional.DEFAULT_PR_THRESHOLDS
    )
    labels = list(range(len(class_names)))
    values = metric_values(
        functional.classification_scores(state, groups=groups),
        labels,
        class_key_components(class_names),
        prefix,
    )
    mlflow.log_metrics(values)
    return values


def train(
    dataset: str = "digits",
    loss: str = "cce",
    imbalance_ratio: float = 20.0,
    epochs: int = 60,
    batch_size: int = 32,
    learning_rate: float = 3e-3,
    seed: int = 0,
    verbose: int = 2,
) -> tuple[str, dict[str, float]]:
    """Train the imbalanced CNN with ``mlflow_mcmetrics.autolog()`` on.

    Runs inside the active run if there is one (``mlflow run``), as a child run inside a
    parent (``compare``), else in a new run. Returns ``(run_id, test values)``.
    """
    from mlflow_mcmetrics import datasets

    _check_choices([loss], dataset)  # fail before TensorFlow is imported
    import keras
    import mlflow

    import mlflow_mcmetrics
    from mlflow_mcmetrics import functional, losses

    data = datasets.load(dataset, imbalance_ratio=imbalance_ratio, seed=seed)
    counts = _train_class_counts(data)
    groups = functional.shot_groups(counts)
    print(
        f"{dataset}: train class counts {counts.tolist()} (ratio {imbalance_ratio:g}; "
        + ", ".join(f"{size} {name}-shot" for name, size in groups.sizes.items())
        + f" classes by {groups.rule}), val {len(data.y_val)}, test {len(data.y_test)}; "
        f"loss {loss}",
        flush=True,
    )

    callbacks = []
    if loss == "ldam":  # Cao et al.'s schedule: re-weighting from 80% of training on
        loss_object = losses.get(loss, counts, drw_start_epoch=int(0.8 * epochs))
        callbacks.append(losses.DeferredReweighting(loss_object))
    else:
        loss_object = losses.get(loss, counts)
    # Nothing here reads the figures after fit(): they are drawn while the test split is
    # scored and the next fit starts (the process waits for them before it exits).
    mlflow_mcmetrics.autolog(
        class_names=data.class_names, class_counts=counts, wait_for_figures=False
    )
    model = build_cnn(data.x_train.shape[1:], data.num_classes, seed)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate), loss=loss_object, metrics=["accuracy"]
    )
    nested = mlflow.active_run() is not None
    with mlflow.start_run(nested=nested, run_name=f"{loss} seed {seed}" if nested else None) as run:
        _log_missing_params(
            {
                "dataset": dataset,
                "loss": loss,
                "imbalance_ratio": imbalance_ratio,
                "epochs": epochs,
                "batch_size": batch_size,
                "learning_rate": learning_rate,
                "seed": seed,
            }
        )
        mlflow.log_dict(
            dict(zip(data.class_names, counts.tolist(), strict=True)), "train_class_counts.json"
        )
        model.fit(
            data.x_train,
            data.y_train,
            validation_data=(data.x_val, data.y_val),
            epochs=epochs,
            batch_size=batch_size,
            verbose=verbose,
            callbacks=callbacks,
        )
        test = _test_scores(model, data.x_test, data.y_test, data.class_names, groups.groups)
        print(f"{loss}: test macro F1 {test['test_f1_macro']:.3f}", flush=True)
        return run.info.run_id, test


def _comparison_page(
    table: dict, title: str, run_ids: dict[str, list[str]], train_counts: dict | None
) -> str:
    from mlflow_mcmetrics import pages

    data = pages.comparison_data(table, run_ids, title=title, train_counts=train_counts)
    return pages.comparison_html(data)


def _log_comparison(
    table: dict, title: str, run_ids: dict[str, list[str]], train_counts: dict[str, int]
) -> None:
    import mlflow

    from mlflow_mcmetrics import plots, report

    mlflow.log_text(report.comparison_to_csv(table), "comparison/comparison.csv")
    mlflow.log_text(report.comparison_to_markdown(table), "comparison/comparison.md")
    mlflow.log_figure(plots.plot_comparison(table, title=title), "comparison/comparison.png")
    mlflow.log_text(
        _comparison_page(table, title, run_ids, train_counts), "comparison/comparison.html"
    )


def compare_losses(
    losses_to_compare: Sequence[str] = MULTICLASS_LOSSES,
    seeds: int = 1,
    dataset: str = "digits",
    imbalance_ratio: float = 20.0,
    epochs: int = 60,
    batch_size: int = 32,
    learning_rate: float = 3e-3,
) -> dict:
    """Train once per loss and seed as child runs of one parent run, and log to the parent a
    table (CSV, Markdown) and a plot of per-class and macro F1 on the test split per loss."""
    from mlflow_mcmetrics import datasets

    _check_choices(losses_to_compare, dataset)
    import mlflow

    from mlflow_mcmetrics import report
    from mlflow_mcmetrics.naming import class_key_components

    data = datasets.load(dataset, imbalance_ratio=imbalance_ratio, seed=0)
    class_keys = class_key_components(data.class_names)
    train_counts = dict(zip(class_keys, _train_class_counts(data).tolist(), strict=True))
    class_keys = _head_to_tail(class_keys, train_counts)
    results = []
    run_ids: dict[str, list[str]] = {}
    with mlflow.start_run():
        _log_missing_params(
            {
                "losses": ",".join(losses_to_compare),
                "seeds": seeds,
                "dataset": dataset,
                "imbalance_ratio": imbalance_ratio,
                "epochs": epochs,
            }
        )
        for seed in range(seeds):
            for name in losses_to_compare:
                run_id, test = train(
                    dataset,
                    name,
                    imbalance_ratio,
                    epochs,
                    batch_size,
                    learning_rate,
                    seed,
                    verbose=0,
                )
                results.append((name, test))
                run_ids.setdefault(name, []).append(run_id)
        table = report.comparison_table(
            results, class_keys, "test_", groups=_groups_by_key(train_counts)
        )
        _log_comparison(
            table,
            f"{dataset}, imbalance ratio {imbalance_ratio:g}: test F1 per class, {seeds} seed(s)",
            run_ids,
            train_counts,
        )
    print(report.comparison_to_markdown(table), flush=True)
    return table


def compare_experiment(experiment: str, output: str = "comparison", group_by: str = "loss") -> dict:
    """The comparison table and plot from an experiment's finished runs that carry
    mlflow-mcmetrics metrics (test split if every run has it, else validation), grouped by
    the ``group_by`` param (runs without it: by run name). Written to ``output/``."""
    from pathlib import Path

    import mlflow

    from mlflow_mcmetrics import plots, report

    found = mlflow.get_experiment_by_name(experiment)
    if found is None:
        raise SystemExit(f"No experiment named {experiment!r} at {mlflow.get_tracking_uri()}.")
    runs = [
        run
        for run in mlflow.search_runs([found.experiment_id], output_format="list")
        if any(key.endswith("f1_macro") for key in run.data.metrics)
        and "/" in "".join(run.data.metrics)
    ]
    prefix = next(
        (
            p
            for p in ("test_", "val_", "")
            if runs and all(f"{p}f1_macro" in r.data.metrics for r in runs)
        ),
        None,
    )
    if prefix is None:
        raise SystemExit(f"No runs with mlflow-mcmetrics metrics in experiment {experiment!r}.")
    labels = mlflow.artifacts.load_dict(f"runs:/{runs[0].info.run_id}/mcmetrics/labels.json")
    class_keys = [
        entry["key"] for entry in labels["labels"] if entry["index"] != labels.get("ignore_class")
    ]
    runs = sorted(runs, key=lambda r: r.info.start_time)
    train_counts = _train_counts(runs[0].info.run_id, labels)
    class_keys = _head_to_tail(class_keys, train_counts)
    results = [(run.data.params.get(group_by, run.info.run_name), run.data.metrics) for run in runs]
    run_ids: dict[str, list[str]] = {}
    for (group, _), run in zip(results, runs, strict=True):
        run_ids.setdefault(group, []).append(run.info.run_id)
    table = report.comparison_table(
        results, class_keys, prefix, groups=_groups_by_key(train_counts)
    )
    title = f"{experiment}: {prefix}F1 per class"
    folder = Path(output)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "comparison.csv").write_text(report.comparison_to_csv(table))
    (folder / "comparison.md").write_text(report.comparison_to_markdown(table))
    plots.plot_comparison(table, title=title).savefig(folder / "comparison.png", dpi=100)
    (folder / "comparison.html").write_text(
        _comparison_page(table, title, run_ids, train_counts),
        encoding="utf-8",
    )
    print(report.comparison_to_markdown(table), flush=True)
    print(
        f"wrote {folder}/comparison.csv, comparison.md, comparison.png, comparison.html",
        flush=True,
    )
    return table


def _head_to_tail(class_keys: list[str], train_counts: dict[str, int] | None) -> list[str]:
    """Classes by training count, most first (ties and unknown counts keep their order)."""
    if not train_counts:
        return class_keys
    return sorted(class_keys, key=lambda key: -train_counts.get(key, 0))


def _train_counts(run_id: str, labels: dict) -> dict[str, int] | None:
    """The training samples per class key of a run that logged ``train_class_counts.json``
    (the MLproject's runs do), else None."""
    import mlflow

    try:
        counts = mlflow.artifacts.load_dict(f"runs:/{run_id}/train_class_counts.json")
    except Exception:  # noqa: BLE001 - not an MLproject run: the page goes without counts
        return None
    keys = {entry["name"]: entry["key"] for entry in labels["labels"]}
    return {keys[name]: count for name, count in counts.items() if name in keys}


def sequence(epochs: int = 10, seed: int = 0) -> str:
    """Seed 001: an LSTM tagger on zero-padded sequences with ``mask_zero=True``; padding tag
    0 is left out of every metric (``ignore_class=0``)."""
    import keras

    import mlflow_mcmetrics
    from mlflow_mcmetrics import datasets

    tokens, tags = datasets.padded_sequences(seed=seed)
    num_tags = int(tags.max()) + 1
    split = int(0.8 * len(tokens))
    mlflow_mcmetrics.autolog(
        class_names=["<pad>", *(f"tag {t}" for t in range(1, num_tags))], ignore_class=0
    )
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input((tokens.shape[1],)),
            keras.layers.Embedding(int(tokens.max()) + 1, 32, mask_zero=True),
            keras.layers.Bidirectional(keras.layers.LSTM(32, return_sequences=True)),
            keras.layers.Dense(num_tags, activation="softmax"),
        ]
    )
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy")
    return _fit_in_a_run(model, tokens, tags, split, epochs, {"epochs": epochs, "seed": seed})


def _fit_in_a_run(model, x, y, split: int, epochs: int, params: dict) -> str:
    """``fit`` on rows ``[:split]``, validated on ``[split:]``, in a new run (the entry point's
    under ``mlflow run``); returns its id."""
    import mlflow

    with mlflow.start_run() as run:
        _log_missing_params(params)
        model.fit(
            x[:split],
            y[:split],
            validation_data=(x[split:], y[split:]),
            epochs=epochs,
            batch_size=64,
            verbose=2,
        )
        return run.info.run_id


def multilabel(loss: str = "weighted_bce", epochs: int = 10, seed: int = 0) -> str:
    """Seed 004: 30 sparse labels; ``weighted_bce`` (per-label ``pos_weight``) or ``bce``."""
    import keras

    import mlflow_mcmetrics
    from mlflow_mcmetrics import datasets, losses

    x, y = datasets.sparse_multilabel(seed=seed)
    split = int(0.8 * len(x))
    if loss == "weighted_bce":
        loss_object = losses.get("weighted_bce", y[:split].sum(0) + 1, num_samples=split)
    elif loss == "bce":
        loss_object = keras.losses.BinaryCrossentropy(from_logits=True)
    else:
        raise ValueError(
            f"Unknown loss {loss!r} for the multilabel scenario; choose weighted_bce or bce."
        )
    mlflow_mcmetrics.autolog(
        task="multilabel", class_names=[f"label {i}" for i in range(y.shape[1])]
    )
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input((y.shape[1],)),
            keras.layers.Dense(100, activation="relu"),
            keras.layers.Dense(100, activation="relu"),
            keras.layers.Dense(y.shape[1]),
        ]
    )
    model.compile(optimizer="adam", loss=loss_object)
    return _fit_in_a_run(model, x, y, split, epochs, {"loss": loss, "epochs": epochs, "seed": seed})


def _count(text: str) -> int:
    """An integer that MLproject may have passed as float text ("60.0")."""
    value = float(text)
    if value != int(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}")
    return int(value)


def _add_training_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dataset", default="digits", help="digits (embedded), fashion_mnist, cifar10 or npz:PATH"
    )
    parser.add_argument(
        "--imbalance-ratio", type=float, default=20.0, help="largest / smallest training class"
    )
    parser.add_argument("--epochs", type=_count, default=60)
    parser.add_argument("--batch-size", type=_count, default=32)
    parser.add_argument("--learning-rate", type=float, default=3e-3)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="mcmetrics", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)

    train_parser = commands.add_parser(
        "train", help="train the imbalanced CNN (MLproject entry point main)"
    )
    _add_training_arguments(train_parser)
    train_parser.add_argument(
        "--loss", default="cce", help=f"one of {', '.join(MULTICLASS_LOSSES)}, balanced_softmax"
    )
    train_parser.add_argument("--seed", type=_count, default=0)

    losses_parser = commands.add_parser(
        "compare-losses", help="train once per loss and seed, compare (entry point compare)"
    )
    _add_training_arguments(losses_parser)
    losses_parser.add_argument(
        "--losses", default=",".join(MULTICLASS_LOSSES), help="comma-separated loss names"
    )
    losses_parser.add_argument("--seeds", type=_count, default=1)

    compare_parser = commands.add_parser(
        "compare", help="compare the runs of an existing experiment"
    )
    compare_parser.add_argument("--experiment", required=True)
    compare_parser.add_argument(
        "--output", default="comparison", help="folder for comparison.csv/.md/.png"
    )
    compare_parser.add_argument(
        "--group-by", default="loss", help="run param that names a group (default: loss)"
    )

    sequence_parser = commands.add_parser("sequence", help="padded sequence tagger (seed 001)")
    sequence_parser.add_argument("--epochs", type=_count, default=10)
    sequence_parser.add_argument("--seed", type=_count, default=0)

    multilabel_parser = commands.add_parser(
        "multilabel", help="30 sparse labels with weighted BCE (seed 004)"
    )
    multilabel_parser.add_argument("--loss", default="weighted_bce", help="weighted_bce or bce")
    multilabel_parser.add_argument("--epochs", type=_count, default=10)
    multilabel_parser.add_argument("--seed", type=_count, default=0)

    sync_parser = commands.add_parser("sync", help="send what an outage left in the spool folder")
    sync_parser.add_argument(
        "--tracking-uri", default=None, help="default: MLFLOW_TRACKING_URI / MLflow's default"
    )
    sync_parser.add_argument(
        "--spool-dir",
        default=None,
        help="default: $MCMETRICS_SPOOL_DIR, ./mcmetrics-spool, the user cache, the temp folder",
    )

    args = parser.parse_args(argv)
    try:
        if args.command == "train":
            train(
                args.dataset,
                args.loss,
                args.imbalance_ratio,
                args.epochs,
                args.batch_size,
                args.learning_rate,
                args.seed,
            )
        elif args.command == "compare-losses":
            compare_losses(
                [name.strip() for name in args.losses.split(",") if name.strip()],
                args.seeds,
                args.dataset,
                args.imbalance_ratio,
                args.epochs,
                args.batch_size,
                args.learning_rate,
            )
        elif args.command == "compare":
            compare_experiment(args.experiment, args.output, args.group_by)
        elif args.command == "sync":
            from mlflow_mcmetrics.sender import sync

            delivered = sync(args.tracking_uri, args.spool_dir)
            for run_id, count in delivered.items():
                print(f"run {run_id}: {count} record(s) delivered")
            if not delivered:
                from mlflow_mcmetrics.journal import spool_dirs

                folders = [args.spool_dir] if args.spool_dir else spool_dirs()
                print(f"nothing to send in {', '.join(map(str, folders))}")
        elif args.command == "sequence":
            sequence(args.epochs, args.seed)
        else:
            multilabel(args.loss, args.epochs, args.seed)
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        parser.exit(2, f"mcmetrics {args.command}: error: {error}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
