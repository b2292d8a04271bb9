"""Datasets for the MLproject: loaders and a deterministic long-tail sampler (NumPy only).

Every loader returns a :class:`Splits` with images as float32 ``(N, H, W, channels)`` in
[0, 1] and integer labels. Validation and test splits stay balanced; only the training split
is made long-tailed, by :func:`long_tail`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

__all__ = [
    "DATASETS",
    "Splits",
    "check_dataset_name",
    "load",
    "long_tail",
    "long_tail_counts",
    "padded_sequences",
    "sparse_multilabel",
]

DATASETS = ("digits", "fashion_mnist", "cifar10", "npz:PATH")


@dataclasses.dataclass(frozen=True)
class Splits:
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: list[str]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def long_tail_counts(available: np.ndarray, imbalance_ratio: float) -> np.ndarray:
    """Per-class sample counts on an exponential profile: class 0 keeps the most, the last
    class ``imbalance_ratio`` times fewer (``n_c = n_max * ratio ** (-c / (C - 1))``).

    >>> long_tail_counts(np.array([100, 100, 100, 100]), imbalance_ratio=10)
    array([100,  46,  21,  10])
    """
    if imbalance_ratio < 1:
        raise ValueError(
            f"imbalance_ratio must be >= 1 (largest / smallest class), got {imbalance_ratio}."
        )
    num_classes = len(available)
    head = int(available.min())
    profile = imbalance_ratio ** (-np.arange(num_classes) / max(num_classes - 1, 1))
    return np.maximum(1, np.floor(head * profile)).astype(int)


def long_tail(
    x: np.ndarray, y: np.ndarray, imbalance_ratio: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """A long-tailed subsample of ``(x, y)`` (:func:`long_tail_counts`); same seed, same rows."""
    rng = np.random.default_rng(seed)
    classes = np.arange(int(y.max()) + 1)
    counts = long_tail_counts(np.bincount(y, minlength=len(classes)), imbalance_ratio)
    keep = np.concatenate(
        [rng.choice(np.flatnonzero(y == c), size=counts[c], replace=False) for c in classes]
    )
    keep = rng.permutation(keep)
    return x[keep], y[keep]


def _balanced_split(x, y, fractions, seed):
    """Stratified split into len(fractions) parts."""
    rng = np.random.default_rng(seed)
    parts = [[] for _ in fractions]
    for c in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == c))
        edges = (np.cumsum(fractions)[:-1] * len(members)).astype(int)
        for part, chunk in zip(parts, np.split(members, edges), strict=True):
            part.append(chunk)
    return [(x[idx], y[idx]) for idx in (rng.permutation(np.concatenate(p)) for p in parts)]


def _digits(seed):
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = (x.reshape(-1, 8, 8, 1) / 16.0).astype("float32")
    (xt, yt), (xv, yv), (xs, ys) = _balanced_split(x, y.astype(int), [0.6, 0.2, 0.2], seed)
    return xt, yt, xv, yv, xs, ys, [str(c) for c in range(10)]


def _keras_dataset(name, seed):
    import keras

    module = getattr(keras.datasets, name)
    try:
        (x, y), (x_test, y_test) = module.load_data()
    except Exception as error:  # noqa: BLE001 - any download failure gets the same advice
        raise RuntimeError(
            f"Could not load keras.datasets.{name} ({error}). It downloads on first use into "
            "~/.keras/datasets; without internet, put the file there or use dataset=npz:PATH."
        ) from error
    x = x.astype("float32") / 255.0
    x_test = x_test.astype("float32") / 255.0
    if x.ndim == 3:
        x, x_test = x[..., None], x_test[..., None]
    y, y_test = y.reshape(-1).astype(int), y_test.reshape(-1).astype(int)
    (xt, yt), (xv, yv) = _balanced_split(x, y, [5 / 6, 1 / 6], seed)
    names = {
        "fashion_mnist": [
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ],
        "cifar10": [
            "airplane",
            "automobile",
            "bird",
            "cat",
            "deer",
            "dog",
            "frog",
            "horse",
            "ship",
            "truck",
        ],
    }[name]
    return xt, yt, xv, yv, x_test, y_test, names


def _npz(path):
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"dataset=npz:{path}: no such file.")
    with np.load(path, allow_pickle=False) as data:
        missing = {"x_train", "y_train", "x_val", "y_val"} - set(data.files)
        if missing:
            raise ValueError(
                f"{path} lacks arrays {sorted(missing)}; it needs x_train, y_train, x_val, y_val."
            )
        arrays = {k: data[k] for k in data.files}
    x_train = arrays["x_train"].astype("float32")
    y_train = arrays["y_train"].reshape(-1).astype(int)
    x_test = arrays.get("x_test", arrays["x_val"]).astype("float32")
    y_test = arrays.get("y_test", arrays["y_val"]).reshape(-1).astype(int)
    num_classes = int(max(y_train.max(), arrays["y_val"].max())) + 1
    names = (
        [str(n) for n in arrays["class_names"]]
        if "class_names" in arrays
        else [str(c) for c in range(num_classes)]
    )
    return (
        x_train,
        y_train,
        arrays["x_val"].astype("float32"),
        arrays["y_val"].reshape(-1).astype(int),
        x_test,
        y_test,
        names,
    )


def check_dataset_name(name: str) -> None:
    """A ValueError listing the choices for an unknown dataset name."""
    if name not in DATASETS[:-1] and not name.startswith("npz:"):  # DATASETS[-1] is "npz:PATH"
        raise ValueError(f"Unknown dataset {name!r}; choose one of {', '.join(DATASETS)}.")


def load(name: str, *, imbalance_ratio: float = 1.0, seed: int = 0) -> Splits:
    """Load ``digits`` (embedded), ``fashion_mnist``/``cifar10`` (``keras.datasets``) or
    ``npz:PATH`` (arrays ``x_train, y_train, x_val, y_val`` and optionally ``x_test, y_test,
    class_names``), with the training split made long-tailed by ``imbalance_ratio``."""
    check_dataset_name(name)
    if name == "digits":
        parts = _digits(seed)
    elif name.startswith("npz:"):
        parts = _npz(name[4:])
    else:
        parts = _keras_dataset(name, seed)
    x_train, y_train, *rest, names = parts
    if imbalance_ratio > 1:
        x_train, y_train = long_tail(x_train, y_train, imbalance_ratio, seed)
    return Splits(x_train, y_train, *rest, class_names=names)


def padded_sequences(
    num_sequences: int = 800,
    *,
    num_tags: int = 6,
    vocabulary: int = 50,
    max_length: int = 20,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Zero-padded token sequences and their tags (tag 0 = padding), long-tailed tags.

    A token's tag is a function of the token and its predecessor, with tags 1..num_tags-1
    drawn on an exponential profile (tag 1 common, the last rare). Returns ``(tokens, tags)``,
    both ``(num_sequences, max_length)`` int arrays.
    """
    rng = np.random.default_rng(seed)
    profile = 2.0 ** -np.arange(num_tags - 1)
    token_tag = 1 + rng.choice(num_tags - 1, size=vocabulary, p=profile / profile.sum())
    tokens = rng.integers(1, vocabulary, (num_sequences, max_length))
    tags = token_tag[tokens]
    follows_rare = np.roll(tags, 1, axis=1) == num_tags - 1
    tags = np.where(follows_rare & (tags == 1), num_tags - 1, tags)
    lengths = rng.integers(max(2, max_length // 4), max_length + 1, num_sequences)
    padding = np.arange(max_length)[None, :] >= lengths[:, None]
    tokens[padding] = 0
    tags[padding] = 0
    return tokens, tags


def sparse_multilabel(
    num_samples: int = 6000, *, num_labels: int = 30, signal: float = 0.6, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Seed 004's data: about one positive of ``num_labels`` per sample, and features where a
    positive label shows up with probability ``signal`` (plus noise). Returns ``(x, y)``."""
    rng = np.random.default_rng(seed)
    y = (rng.random((num_samples, num_labels)) < 1.0 / num_labels).astype("float32")
    x = (y * (rng.random(y.shape) < signal) + rng.normal(0, 0.1, y.shape)).astype("float32")
    return x, y
