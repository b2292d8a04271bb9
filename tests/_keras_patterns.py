"""Real-world Keras training code for tests/test_keras_patterns.py (issue 27).

Each pattern is the model and training code of a public Keras example (keras.io examples and
guides, TensorFlow's guides, MLflow's own test suite), written the way the example writes it:
its layers, compile arguments, fit arguments and callbacks. Only the data download is replaced
by tiny synthetic data of the same shape and class balance, and sizes (units, filters, image
sides, rows, epochs) are shrunk so that a fit takes a few seconds on a 2-core CPU. Deviations
beyond that are said where they are made.

Two things are added to the examples, for the tests to compare with: a counting metric
(:class:`ConfusionCounts`) in ``metrics=``, which Keras accumulates like any metric of the
user's, unweighted (Keras hands sample weights only to ``weighted_metrics=``); and a callback
(:class:`TrainingCounts`) that reads it at the end of each epoch's training split, before Keras
resets it for validation.

A pattern function trains once per ``fit()`` of its example and returns one :class:`Fit` per
``fit()``, with each classification head's validation labels and the labels
``model.predict`` gives after training (argmax, or probability > 0.5).
"""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from keras import layers, ops

# --------------------------------------------------------------------------------------------
# What the tests compare with: Keras' own unweighted counts, model.predict after training
# --------------------------------------------------------------------------------------------


class ConfusionCounts(keras.metrics.Metric):
    """An unweighted confusion matrix accumulated by Keras with ``keras.ops`` (rows = true
    class, columns = predicted, as scikit-learn; multilabel: one ``[[tn, fp], [fn, tp]]`` per
    label, as ``multilabel_confusion_matrix``).

    ``result()`` is the number of samples counted, so that the epoch logs (and MLflow, which
    logs them) get a scalar; the tests read :attr:`matrix` itself.
    """

    def __init__(
        self,
        num_classes: int,
        task: str = "multiclass",
        sparse: bool = True,
        from_logits: bool = False,
        name: str = "confusion_counts",
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        self.num_classes = num_classes
        self.task = task
        self.sparse = sparse
        self.from_logits = from_logits
        shape = (num_classes, 2, 2) if task == "multilabel" else (num_classes, num_classes)
        self.matrix = self.add_variable(shape=shape, initializer="zeros", name="matrix")

    def update_state(self, y_true, y_pred, sample_weight=None):
        # `sample_weight` is left out on purpose: these are the counts Keras' `metrics=` show.
        y_pred = ops.cast(y_pred, "float32")
        if self.from_logits and self.task != "multiclass":
            y_pred = ops.sigmoid(y_pred)
        threshold = 0.5
        if self.task == "multilabel":
            predicted = ops.cast(ops.reshape(y_pred, (-1, self.num_classes)) > threshold, "int32")
            true = ops.cast(ops.reshape(y_true, (-1, self.num_classes)), "int32")
            cells = ops.sum(ops.one_hot(2 * true + predicted, 4), axis=0)
            self.matrix.assign_add(ops.reshape(cells, (self.num_classes, 2, 2)))
            return
        if self.task == "binary":
            predicted = ops.cast(ops.reshape(y_pred, (-1,)) > threshold, "int32")
        else:
            predicted = ops.reshape(ops.argmax(y_pred, axis=-1), (-1,))
        true = y_true if self.sparse else ops.argmax(y_true, axis=-1)
        true = ops.reshape(ops.cast(true, "int32"), (-1,))
        cell = true * self.num_classes + ops.cast(predicted, "int32")
        cells = ops.sum(ops.one_hot(cell, self.num_classes**2), axis=0)
        self.matrix.assign_add(ops.reshape(cells, (self.num_classes, self.num_classes)))

    def result(self):
        return ops.sum(self.matrix) / (self.num_classes if self.task == "multilabel" else 1)

    def reset_state(self):
        self.matrix.assign(ops.zeros_like(self.matrix))

    def get_config(self):
        return {
            **super().get_config(),
            "num_classes": self.num_classes,
            "task": self.task,
            "sparse": self.sparse,
            "from_logits": self.from_logits,
        }


class TrainingCounts(keras.callbacks.Callback):
    """Each epoch's training-split matrix of every :class:`ConfusionCounts`, read where Keras
    is done with that split: at ``on_test_begin`` (``evaluate()`` resets the metrics right after
    it) or, in an epoch without validation, at ``on_epoch_end``."""

    def __init__(self, counters: dict[str | None, ConfusionCounts]):
        super().__init__()
        self.counters = counters
        self.by_head: dict[str | None, dict[int, np.ndarray]] = defaultdict(dict)
        self._epoch = 0
        self._read = False

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch, self._read = epoch, False

    def on_test_begin(self, logs=None):
        self._read_training_split()

    def on_epoch_end(self, epoch, logs=None):
        self._read_training_split()

    def _read_training_split(self):
        if not self._read:
            for head, counter in self.counters.items():
                self.by_head[head][self._epoch] = ops.convert_to_numpy(counter.matrix).copy()
            self._read = True


@dataclasses.dataclass
class Head:
    """One classification output as the tests check it.

    ``val_true``/``val_pred``: validation labels and the labels ``model.predict`` gives after
    the fit (``(N,)`` class indices; multilabel ``(N, L)`` 0/1), ``None`` without validation.
    ``train_counts``: Keras' unweighted training-split matrix per epoch.
    """

    output: str | None
    task: str
    names: list[str]
    val_true: np.ndarray | None = None
    val_pred: np.ndarray | None = None
    train_counts: dict[int, np.ndarray] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Fit:
    """One ``fit()`` of a pattern: its heads, the epochs Keras ran and validated, and the epoch
    whose weights the model ends with (``EarlyStopping(restore_best_weights=True)``)."""

    history: keras.callbacks.History
    heads: list[Head]
    validated_epochs: list[int]
    restored_epoch: int | None = None

    @property
    def epochs(self) -> list[int]:
        return list(self.history.epoch)


def labels_of(scores: np.ndarray, task: str, from_logits: bool = False) -> np.ndarray:
    """The labels the model's scores decide: argmax, or probability > 0.5."""
    scores = np.asarray(scores, dtype=np.float32)
    if task == "multiclass":
        return scores.argmax(-1)
    if from_logits:  # as the metric decides: the probability in float32, then > 0.5
        scores = ops.convert_to_numpy(ops.sigmoid(scores))
    decided = (scores > 0.5).astype(np.int64)
    return decided.reshape(len(decided)) if task == "binary" else decided


def head(
    output, task, num_classes, true, scores, counts: TrainingCounts, from_logits=False, names=None
) -> Head:
    """A :class:`Head` from validation labels and the model's validation scores."""
    shape = (len(true), -1) if task == "multilabel" else (-1,)
    return Head(
        output=output,
        task=task,
        names=names or [str(c) for c in range(2 if task == "binary" else num_classes)],
        val_true=np.asarray(true).astype(np.int64).reshape(shape),
        val_pred=labels_of(scores, task, from_logits).reshape(shape),
        train_counts=dict(counts.by_head[output]),
    )


def dataset_labels(dataset) -> np.ndarray:
    """The labels of a finite, unshuffled ``(x, y)`` dataset, in order."""
    return np.concatenate([np.asarray(y) for _, y in dataset])


def validated(fit_kwargs: dict, history: keras.callbacks.History) -> list[int]:
    """The epochs Keras validated: every one with validation data, ``validation_freq`` apart."""
    if not fit_kwargs.get("validation_data") and not fit_kwargs.get("validation_split"):
        return []
    freq = fit_kwargs.get("validation_freq", 1)
    return [epoch for epoch in history.epoch if (epoch + 1) % freq == 0]


def fit_and_record(model, counters, *args, **kwargs) -> tuple[keras.callbacks.History, dict]:
    """``model.fit(*args, **kwargs)`` with :class:`TrainingCounts` appended to the user's
    callbacks (the user's list itself is left as the example wrote it)."""
    counts = TrainingCounts(counters)
    callbacks = [*kwargs.pop("callbacks", []), counts]
    history = model.fit(*args, callbacks=callbacks, **kwargs)
    return history, counts


# --------------------------------------------------------------------------------------------
# Synthetic data: the examples' shapes and class balance, learnable in a few epochs
# --------------------------------------------------------------------------------------------


def class_blobs(n, shape, priors, seed, spread=1.0):
    """``n`` samples of ``shape`` around one random centre per class; classes drawn with
    ``priors``. Returns ``(x float32, y int)``."""
    rng = np.random.default_rng(seed)
    priors = np.asarray(priors, dtype=float)
    centres = rng.normal(size=(len(priors), *shape))
    y = rng.choice(len(priors), size=n, p=priors / priors.sum())
    x = centres[y] + spread * rng.normal(size=(n, *shape))
    return x.astype("float32"), y


def images(n, side, channels, num_classes, seed, priors=None, scale=1.0):
    """Images whose class sets a smooth pattern (``(n, side, side, channels)``, ``[0, 255]``
    when ``scale=255``)."""
    rng = np.random.default_rng(seed)
    priors = np.ones(num_classes) if priors is None else np.asarray(priors, dtype=float)
    y = rng.choice(num_classes, size=n, p=priors / priors.sum())
    grid = np.linspace(0, np.pi, side)
    patterns = np.stack(
        [
            np.sin((c % 3 + 1) * grid)[:, None] * np.cos((c // 3 + 1) * grid)[None, :]
            for c in range(num_classes)
        ]
    )
    x = patterns[y][..., None] + 0.6 * rng.normal(size=(n, side, side, channels))
    x = (x - x.min()) / (x.max() - x.min())
    return (x * scale).astype("float32"), y


# --------------------------------------------------------------------------------------------
# The patterns
# --------------------------------------------------------------------------------------------


def fraud_class_weight(tmp_path: Path) -> list[Fit]:
    """keras-io examples/structured_data/imbalanced_classification.py (credit-card fraud):
    30 features, ~0.2 % frauds in the real data (here 3 %, so that 500 rows hold some),
    ``class_weight={0: 1/n0, 1: 1/n1}``, Keras' TP/FP/TN/FN in ``metrics=``. Units 256 -> 32,
    30 epochs -> 2, batch 2048 kept (one batch per epoch)."""
    x, y = class_blobs(500, (30,), [0.97, 0.03], seed=1, spread=2.0)
    features, targets = x, y.astype("uint8")[:, None]
    num_val_samples = int(len(features) * 0.2)
    train_features = features[:-num_val_samples]
    train_targets = targets[:-num_val_samples]
    val_features = features[-num_val_samples:]
    val_targets = targets[-num_val_samples:]
    counts = np.bincount(train_targets[:, 0])
    weight_for_0 = 1.0 / counts[0]
    weight_for_1 = 1.0 / counts[1]
    mean = np.mean(train_features, axis=0)
    train_features -= mean
    val_features -= mean
    std = np.std(train_features, axis=0)
    train_features /= std
    val_features /= std

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input(shape=train_features.shape[1:]),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dropout(0.3),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dropout(0.3),
            keras.layers.Dense(1, activation="sigmoid"),
        ]
    )
    metrics = [
        keras.metrics.FalseNegatives(name="fn"),
        keras.metrics.FalsePositives(name="fp"),
        keras.metrics.TrueNegatives(name="tn"),
        keras.metrics.TruePositives(name="tp"),
        keras.metrics.Precision(name="precision"),
        keras.metrics.Recall(name="recall"),
    ]
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2), loss="binary_crossentropy", metrics=metrics
    )
    callbacks = [
        keras.callbacks.ModelCheckpoint(str(tmp_path / "fraud_model_at_epoch_{epoch}.keras"))
    ]
    class_weight = {0: weight_for_0, 1: weight_for_1}
    history = model.fit(
        train_features,
        train_targets,
        batch_size=2048,
        epochs=2,
        verbose=0,
        callbacks=callbacks,
        validation_data=(val_features, val_targets),
        class_weight=class_weight,
    )
    # Keras' own unweighted counts of each epoch's training split are in the history.
    logged = history.history
    train_counts = {
        epoch: np.array(
            [[logged["tn"][epoch], logged["fp"][epoch]], [logged["fn"][epoch], logged["tp"][epoch]]]
        )
        for epoch in history.epoch
    }
    scores = model.predict(val_features, verbose=0)
    fraud = Head(
        None,
        "binary",
        ["0", "1"],
        val_targets[:, 0].astype(np.int64),
        labels_of(scores, "binary"),
        train_counts,
    )
    return [Fit(history, [fraud], list(history.epoch))]


ARXIV_TERMS = ["cs.CV", "cs.LG", "stat.ML", "cs.AI", "eess.IV"]
TERM_RATES = [0.6, 0.5, 0.3, 0.15, 0.05]


def _abstracts(n, seed):
    """Abstract-like texts and their term lists: each term has its own words, mixed with
    common ones; ``cs.CV`` and ``cs.LG`` frequent, ``eess.IV`` rare (as in arXiv's)."""
    rng = np.random.default_rng(seed)
    own_words = {term: [f"{term.replace('.', '')}w{i}" for i in range(8)] for term in ARXIV_TERMS}
    common = [f"the{i}" for i in range(30)]
    texts, terms = [], []
    for _ in range(n):
        chosen = [t for t, p in zip(ARXIV_TERMS, TERM_RATES, strict=True) if rng.random() < p]
        chosen = chosen or ["cs.CV"]
        words = list(rng.choice(common, size=12))
        for term in chosen:
            words += list(rng.choice(own_words[term], size=4))
        rng.shuffle(words)
        texts.append(" ".join(words))
        terms.append(chosen)
    return np.array(texts), terms


def multilabel_text_vectorization(tmp_path: Path) -> list[Fit]:
    """keras-io examples/nlp/multi_label_classification.py: ``StringLookup(multi_hot)`` labels,
    ``TextVectorization(ngrams=2, output_mode="tf_idf")`` mapped into ``tf.data``, a shallow
    MLP with ``lookup.vocabulary_size()`` sigmoid units (the OOV label included, as there).
    Units 512/256 -> 32/16, 20 epochs -> 2, batch 128 -> 64."""
    train_text, train_terms = _abstracts(320, seed=2)
    val_text, val_terms = _abstracts(100, seed=3)
    terms = tf.ragged.constant(train_terms)
    lookup = keras.layers.StringLookup(output_mode="multi_hot")
    lookup.adapt(terms)
    batch_size = 64
    auto = tf.data.AUTOTUNE

    def make_dataset(texts, term_lists, is_train=True):
        labels = tf.ragged.constant(term_lists)
        label_binarized = lookup(labels).numpy()
        dataset = tf.data.Dataset.from_tensor_slices((texts, label_binarized))
        dataset = dataset.shuffle(batch_size * 10, seed=0) if is_train else dataset
        return dataset.batch(batch_size)

    train_dataset = make_dataset(train_text, train_terms, is_train=True)
    validation_dataset = make_dataset(val_text, val_terms, is_train=False)
    vocabulary = set()
    for text in train_text:
        vocabulary.update(text.lower().split())
    text_vectorizer = layers.TextVectorization(
        max_tokens=len(vocabulary), ngrams=2, output_mode="tf_idf"
    )
    with tf.device("/CPU:0"):
        text_vectorizer.adapt(train_dataset.map(lambda text, label: text))
    train_dataset = train_dataset.map(
        lambda text, label: (text_vectorizer(text), label), num_parallel_calls=auto
    ).prefetch(auto)
    validation_dataset = validation_dataset.map(
        lambda text, label: (text_vectorizer(text), label), num_parallel_calls=auto
    ).prefetch(auto)

    keras.utils.set_random_seed(0)
    shallow_mlp_model = keras.Sequential(
        [
            layers.Dense(32, activation="relu"),
            layers.Dense(16, activation="relu"),
            layers.Dense(lookup.vocabulary_size(), activation="sigmoid"),
        ]
    )
    width = lookup.vocabulary_size()
    counter = ConfusionCounts(width, task="multilabel")
    shallow_mlp_model.compile(
        loss="binary_crossentropy", optimizer="adam", metrics=["binary_accuracy", counter]
    )
    fit_kwargs = dict(validation_data=validation_dataset, epochs=2, verbose=0)
    history, counts = fit_and_record(
        shallow_mlp_model, {None: counter}, train_dataset, **fit_kwargs
    )
    scores = shallow_mlp_model.predict(validation_dataset, verbose=0)
    labels = dataset_labels(validation_dataset)
    return [
        Fit(
            history,
            [head(None, "multilabel", width, labels, scores, counts)],
            validated(fit_kwargs, history),
        )
    ]


class TransformerBlock(layers.Layer):
    """keras-io examples/nlp/ner_transformers.py (``keras.layers`` for ``tf.keras.layers``)."""

    def __init__(self, embed_dim, num_heads, ff_dim, rate=0.1):
        super().__init__()
        self.att = keras.layers.MultiHeadAttention(num_heads=num_heads, key_dim=embed_dim)
        self.ffn = keras.Sequential(
            [keras.layers.Dense(ff_dim, activation="relu"), keras.layers.Dense(embed_dim)]
        )
        self.layernorm1 = keras.layers.LayerNormalization(epsilon=1e-6)
        self.layernorm2 = keras.layers.LayerNormalization(epsilon=1e-6)
        self.dropout1 = keras.layers.Dropout(rate)
        self.dropout2 = keras.layers.Dropout(rate)

    def call(self, inputs, training=False):
        attn_output = self.att(inputs, inputs)
        attn_output = self.dropout1(attn_output, training=training)
        out1 = self.layernorm1(inputs + attn_output)
        ffn_output = self.ffn(out1)
        ffn_output = self.dropout2(ffn_output, training=training)
        return self.layernorm2(out1 + ffn_output)


class TokenAndPositionEmbedding(layers.Layer):
    def __init__(self, maxlen, vocab_size, embed_dim):
        super().__init__()
        self.token_emb = keras.layers.Embedding(input_dim=vocab_size, output_dim=embed_dim)
        self.pos_emb = keras.layers.Embedding(input_dim=maxlen, output_dim=embed_dim)

    def call(self, x):
        maxlen = tf.shape(x)[-1]
        positions = tf.range(start=0, limit=maxlen, delta=1)
        positions = self.pos_emb(positions)
        x = self.token_emb(x)
        return x + positions


class NERModel(keras.Model):
    def __init__(self, num_tags, vocab_size, maxlen=128, embed_dim=32, num_heads=2, ff_dim=32):
        super().__init__()
        self.embedding_layer = TokenAndPositionEmbedding(maxlen, vocab_size, embed_dim)
        self.transformer_block = TransformerBlock(embed_dim, num_heads, ff_dim)
        self.dropout1 = layers.Dropout(0.1)
        self.ff = layers.Dense(ff_dim, activation="relu")
        self.dropout2 = layers.Dropout(0.1)
        self.ff_final = layers.Dense(num_tags, activation="softmax")

    def call(self, inputs, training=False):
        x = self.embedding_layer(inputs)
        x = self.transformer_block(x)
        x = self.dropout1(x, training=training)
        x = self.ff(x)
        x = self.dropout2(x, training=training)
        x = self.ff_final(x)
        return x


class CustomLoss(keras.losses.Loss):
    """The example's loss: sparse cross-entropy over the non-padding tags."""

    def __init__(self, name="custom_ner_loss"):
        super().__init__(name=name)

    def call(self, y_true, y_pred):
        loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)
        loss = loss_fn(y_true, y_pred)
        mask = tf.cast((y_true > 0), dtype=tf.float32)
        loss = loss * mask
        return tf.reduce_sum(loss) / tf.reduce_sum(mask)


NER_TAGS = ["[PAD]", "O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]


def _tagged_sentences(n, vocab_size, seed):
    """Token ids and tags (``+1``, 0 is padding, as the example's ``map_func``): mostly ``O``,
    entity tags tied to token ids; 4 to 12 tokens."""
    rng = np.random.default_rng(seed)
    sentences = []
    for _ in range(n):
        length = int(rng.integers(4, 13))
        tokens = rng.integers(2, vocab_size, size=length)
        entity = tokens % 12 < 4
        tags = np.where(entity, 2 + tokens % 8, 1)
        sentences.append((tokens.astype(np.int64), tags.astype(np.int64)))
    return sentences


def ner_subclassed_custom_loss(tmp_path: Path) -> list[Fit]:
    """keras-io examples/nlp/ner_transformers.py: ``NERModel(keras.Model)`` subclass, custom
    ``Loss`` wrapping ``SparseCategoricalCrossentropy``, ``padded_batch`` datasets.
    Embedding 32 -> 16, heads 4 -> 2, ff 64 -> 16, 10 epochs -> 2. The example's ``fit`` has
    no validation data (it scores the validation set after training); the counting metric is
    the only addition to ``compile()``."""
    num_tags, vocab_size, batch_size = len(NER_TAGS), 200, 32

    def dataset(sentences):
        return tf.data.Dataset.from_generator(
            lambda: iter(sentences),
            output_signature=(
                tf.TensorSpec((None,), tf.int64),
                tf.TensorSpec((None,), tf.int64),
            ),
        ).padded_batch(batch_size)

    train_dataset = dataset(_tagged_sentences(256, vocab_size, seed=4))
    keras.utils.set_random_seed(0)
    ner_model = NERModel(num_tags, vocab_size, embed_dim=16, num_heads=2, ff_dim=16)
    counter = ConfusionCounts(num_tags)
    ner_model.compile(optimizer="adam", loss=CustomLoss(), metrics=[counter])
    history, counts = fit_and_record(ner_model, {None: counter}, train_dataset, epochs=2, verbose=0)
    tags = Head(None, "multiclass", [str(c) for c in range(num_tags)])
    tags.train_counts = dict(counts.by_head[None])
    return [Fit(history, [tags], [])]


def mnist_convnet(tmp_path: Path) -> list[Fit]:
    """keras-io examples/vision/mnist_convnet.py: Conv2D/MaxPooling2D/Dropout/softmax,
    ``categorical_crossentropy`` on ``to_categorical`` labels, ``validation_split=0.1``.
    28x28 -> 14x14, filters 32/64 -> 4/8, 60 000 -> 300 images, 15 epochs -> 2."""
    num_classes = 10
    x_train, y_train = images(300, 14, 1, num_classes, seed=5)
    y_train = keras.utils.to_categorical(y_train, num_classes)
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input(shape=(14, 14, 1)),
            layers.Conv2D(4, kernel_size=(3, 3), activation="relu"),
            layers.MaxPooling2D(pool_size=(2, 2)),
            layers.Conv2D(8, kernel_size=(3, 3), activation="relu"),
            layers.MaxPooling2D(pool_size=(2, 2)),
            layers.Flatten(),
            layers.Dropout(0.5),
            layers.Dense(num_classes, activation="softmax"),
        ]
    )
    counter = ConfusionCounts(num_classes, sparse=False)
    model.compile(loss="categorical_crossentropy", optimizer="adam", metrics=["accuracy", counter])
    fit_kwargs = dict(batch_size=128, epochs=2, validation_split=0.1, verbose=0)
    history, counts = fit_and_record(model, {None: counter}, x_train, y_train, **fit_kwargs)
    split_at = int(math.ceil(len(x_train) * (1.0 - 0.1)))  # Keras takes the last 10 %
    scores = model.predict(x_train[split_at:], verbose=0)
    val_true = y_train[split_at:].argmax(-1)
    return [
        Fit(
            history,
            [head(None, "multiclass", num_classes, val_true, scores, counts)],
            validated(fit_kwargs, history),
        )
    ]


class GuideFirstModel(keras.Model):
    """guides/custom_train_step_in_tensorflow.py, "A first simple example": ``train_step``
    computes the compiled loss and updates every metric of ``self.metrics`` itself."""

    def train_step(self, data):
        x, y = data
        with tf.GradientTape() as tape:
            y_pred = self(x, training=True)
            loss = self.compute_loss(y=y, y_pred=y_pred)
        trainable_vars = self.trainable_variables
        gradients = tape.gradient(loss, trainable_vars)
        self.optimizer.apply(gradients, trainable_vars)
        for metric in self.metrics:
            if metric.name == "loss":
                metric.update_state(loss)
            else:
                metric.update_state(y, y_pred)
        return {m.name: m.result() for m in self.metrics}


class GuideLowerLevelModel(keras.Model):
    """The guide's "Going lower-level" example: its own loss tracker and metric, listed in an
    overridden ``metrics`` property; ``compute_metrics`` is never called in training."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.accuracy_metric = keras.metrics.SparseCategoricalAccuracy(name="accuracy")
        self.loss_fn = keras.losses.SparseCategoricalCrossentropy()

    def train_step(self, data):
        x, y = data
        with tf.GradientTape() as tape:
            y_pred = self(x, training=True)
            loss = self.loss_fn(y, y_pred)
        trainable_vars = self.trainable_variables
        gradients = tape.gradient(loss, trainable_vars)
        self.optimizer.apply(gradients, trainable_vars)
        self.loss_tracker.update_state(loss)
        self.accuracy_metric.update_state(y, y_pred)
        return {"loss": self.loss_tracker.result(), "accuracy": self.accuracy_metric.result()}

    @property
    def metrics(self):
        return [self.loss_tracker, self.accuracy_metric]


def _guide_data():
    """The guide's ``np.random.random((1000, 32))`` inputs, with 4 classes to predict
    (the guide's models regress one value; these patterns are its classification form)."""
    x, y = class_blobs(400, (32,), [0.4, 0.3, 0.2, 0.1], seed=6, spread=1.5)
    return x[:300], y[:300], x[300:], y[300:]


def custom_train_step_first(tmp_path: Path) -> list[Fit]:
    """The guide's first example on a 4-class softmax head: ``compile(optimizer="adam",
    loss=..., metrics=[...])``, ``fit`` as usual (validation through the default
    ``test_step``)."""
    x, y, x_val, y_val = _guide_data()
    keras.utils.set_random_seed(0)
    inputs = keras.Input(shape=(32,))
    outputs = keras.layers.Dense(4, activation="softmax")(inputs)
    model = GuideFirstModel(inputs, outputs)
    counter = ConfusionCounts(4)
    model.compile(
        optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy", counter]
    )
    fit_kwargs = dict(epochs=2, validation_data=(x_val, y_val), verbose=0)
    history, counts = fit_and_record(model, {None: counter}, x, y, **fit_kwargs)
    scores = model.predict(x_val, verbose=0)
    return [
        Fit(
            history,
            [head(None, "multiclass", 4, y_val, scores, counts)],
            validated(fit_kwargs, history),
        )
    ]


def custom_train_step_own_trackers(tmp_path: Path) -> list[Fit]:
    """The guide's "Going lower-level" example on a 4-class softmax head, compiled with a loss
    as well so that Keras' default ``test_step`` can validate (issue 27, item 4). Training
    never calls ``compute_metrics``: there are no training counts to compare."""
    x, y, x_val, y_val = _guide_data()
    keras.utils.set_random_seed(0)
    inputs = keras.Input(shape=(32,))
    outputs = keras.layers.Dense(4, activation="softmax")(inputs)
    model = GuideLowerLevelModel(inputs, outputs)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    fit_kwargs = dict(epochs=2, validation_data=(x_val, y_val), verbose=0)
    history = model.fit(x, y, **fit_kwargs)
    scores = model.predict(x_val, verbose=0)
    classes = Head(None, "multiclass", [str(c) for c in range(4)], y_val, scores.argmax(-1))
    return [Fit(history, [classes], validated(fit_kwargs, history))]


class OxfordPets(keras.utils.Sequence):
    """keras-io examples/vision/oxford_pets_image_segmentation.py's ``Sequence``, reading
    arrays instead of image files (``load_img``); ``__len__`` and batching as there."""

    def __init__(self, batch_size, img_size, input_imgs, target_imgs):
        self.batch_size = batch_size
        self.img_size = img_size
        self.input_imgs = input_imgs
        self.target_imgs = target_imgs

    def __len__(self):
        return len(self.target_imgs) // self.batch_size

    def __getitem__(self, idx):
        i = idx * self.batch_size
        x = np.zeros((self.batch_size,) + self.img_size + (3,), dtype="float32")
        x[:] = self.input_imgs[i : i + self.batch_size]
        y = np.zeros((self.batch_size,) + self.img_size + (1,), dtype="uint8")
        # Ground truth labels are 1, 2, 3. Subtract one to make them 0, 1, 2:
        y[:] = self.target_imgs[i : i + self.batch_size] - 1
        return x, y


def _trimaps(n, side, seed):
    """Pet images and trimaps (1 pet, 2 background, 3 border), the pet a random box."""
    rng = np.random.default_rng(seed)
    trimaps = np.full((n, side, side, 1), 2, dtype="uint8")
    for k in range(n):
        top, left = rng.integers(1, side // 2, size=2)
        bottom, right = top + rng.integers(4, side // 2 + 1), left + rng.integers(4, side // 2 + 1)
        trimaps[k, top - 1 : bottom + 1, left - 1 : right + 1] = 3
        trimaps[k, top:bottom, left:right] = 1
    colour = np.array([[200, 120, 60], [60, 90, 160], [150, 150, 150]], dtype="float32")
    pictures = colour[trimaps[..., 0] - 1] + 40 * rng.normal(size=(n, side, side, 3))
    return pictures.astype("float32"), trimaps


def _unet(img_size, num_classes):
    """The example's ``get_model``: filters [64, 128, 256] down / [256, 128, 64, 32] up ->
    [8, 16] / [16, 8, 4] (three up-samplings undo the entry block and two down blocks)."""
    inputs = keras.Input(shape=img_size + (3,))
    x = layers.Conv2D(8, 3, strides=2, padding="same")(inputs)
    x = layers.BatchNormalization()(x)
    x = layers.Activation("relu")(x)
    previous_block_activation = x
    for filters in [8, 16]:
        x = layers.Activation("relu")(x)
        x = layers.SeparableConv2D(filters, 3, padding="same")(x)
        x = layers.BatchNormalization()(x)
        x = layers.Activation("relu")(x)
        x = layers.SeparableConv2D(filters, 3, padding="same")(x)
        x = layers.BatchNormalization()(x)
        x = layers.MaxPooling2D(3, strides=2, padding="same")(x)
        residual = layers.Conv2D(filters, 1, strides=2, padding="same")(previous_block_activation)
        x = layers.add([x, residual])
        previous_block_activation = x
    for filters in [16, 8, 4]:
        x = layers.Activation("relu")(x)
        x = layers.Conv2DTranspose(filters, 3, padding="same")(x)
        x = layers.BatchNormalization()(x)
        x = layers.Activation("relu")(x)
        x = layers.Conv2DTranspose(filters, 3, padding="same")(x)
        x = layers.BatchNormalization()(x)
        x = layers.UpSampling2D(2)(x)
        residual = layers.UpSampling2D(2)(previous_block_activation)
        residual = layers.Conv2D(filters, 1, padding="same")(residual)
        x = layers.add([x, residual])
        previous_block_activation = x
    outputs = layers.Conv2D(num_classes, 3, activation="softmax", padding="same")(x)
    return keras.Model(inputs, outputs)


def oxford_pets_segmentation(tmp_path: Path) -> list[Fit]:
    """The segmentation example: U-Net, ``Sequence`` inputs, per-pixel
    ``sparse_categorical_crossentropy`` on ``(batch, H, W, 1)`` masks, ``rmsprop``,
    ``ModelCheckpoint(save_best_only=True)``. 160x160 -> 16x16, 7 390 -> 64 + 32 images,
    batch 32 -> 16, 15 epochs -> 2."""
    img_size, num_classes, batch_size = (16, 16), 3, 16
    pictures, trimaps = _trimaps(96, 16, seed=7)
    keras.utils.set_random_seed(0)
    model = _unet(img_size, num_classes)
    train_gen = OxfordPets(batch_size, img_size, pictures[:64], trimaps[:64])
    val_gen = OxfordPets(batch_size, img_size, pictures[64:], trimaps[64:])
    counter = ConfusionCounts(num_classes)
    model.compile(optimizer="rmsprop", loss="sparse_categorical_crossentropy", metrics=[counter])
    callbacks = [
        keras.callbacks.ModelCheckpoint(
            str(tmp_path / "oxford_segmentation.keras"), save_best_only=True
        )
    ]
    fit_kwargs = dict(epochs=2, validation_data=val_gen, verbose=0)
    history, counts = fit_and_record(
        model, {None: counter}, train_gen, callbacks=callbacks, **fit_kwargs
    )
    val_preds = model.predict(val_gen, verbose=0)
    val_true = np.concatenate([val_gen[i][1] for i in range(len(val_gen))])
    return [
        Fit(
            history,
            [head(None, "multiclass", num_classes, val_true, val_preds, counts)],
            validated(fit_kwargs, history),
        )
    ]


def _guide_mnist(n_train=320, n_val=100, seed=8):
    """The built-in-methods guide's flattened MNIST (784 -> 64 features), 10 classes."""
    x, y = class_blobs(n_train + n_val, (64,), np.ones(10), seed=seed, spread=2.0)
    y = y.astype("float32")  # the guide's y_train.astype("float32")
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


def get_uncompiled_model():
    """guides/training_with_built_in_methods.py, units 64 -> 16, 784 -> 64 inputs."""
    inputs = keras.Input(shape=(64,), name="digits")
    x = layers.Dense(16, activation="relu", name="dense_1")(inputs)
    x = layers.Dense(16, activation="relu", name="dense_2")(x)
    outputs = layers.Dense(10, activation="softmax", name="predictions")(x)
    return keras.Model(inputs=inputs, outputs=outputs)


def get_compiled_model(counter):
    keras.utils.set_random_seed(0)
    model = get_uncompiled_model()
    model.compile(
        optimizer="rmsprop",
        loss="sparse_categorical_crossentropy",
        metrics=["sparse_categorical_accuracy", counter],
    )
    return model


def _guide_fit(fit_args, fit_kwargs, val_x, val_y, model, counter) -> list[Fit]:
    history, counts = fit_and_record(model, {None: counter}, *fit_args, **fit_kwargs)
    scores = model.predict(val_x, verbose=0)
    return [
        Fit(
            history,
            [head(None, "multiclass", 10, val_y, scores, counts)],
            validated(fit_kwargs, history),
        )
    ]


def tf_data_class_weight(tmp_path: Path) -> list[Fit]:
    """The guide's ``tf.data`` training (``shuffle(1024).batch(64)``, validation dataset) with
    its ``class_weight`` (class 5 counts twice). Epochs 1 -> 2."""
    x_train, y_train, x_val, y_val = _guide_mnist()
    class_weight = {c: 1.0 for c in range(10)}
    class_weight[5] = 2.0
    counter = ConfusionCounts(10)
    model = get_compiled_model(counter)
    train_dataset = tf.data.Dataset.from_tensor_slices((x_train, y_train))
    train_dataset = train_dataset.shuffle(buffer_size=1024, seed=0).batch(64)
    val_dataset = tf.data.Dataset.from_tensor_slices((x_val, y_val)).batch(64)
    fit_kwargs = dict(epochs=2, validation_data=val_dataset, class_weight=class_weight, verbose=0)
    return _guide_fit((train_dataset,), fit_kwargs, x_val, y_val, model, counter)


class CIFAR10PyDataset(keras.utils.PyDataset):
    """Keras' ``PyDataset`` documentation example (arrays instead of image files): the last
    batch is partial, ``super().__init__(**kwargs)`` takes ``workers`` & co."""

    def __init__(self, x_set, y_set, batch_size, **kwargs):
        super().__init__(**kwargs)
        self.x, self.y = x_set, y_set
        self.batch_size = batch_size

    def __len__(self):
        return math.ceil(len(self.x) / self.batch_size)

    def __getitem__(self, idx):
        low = idx * self.batch_size
        high = min(low + self.batch_size, len(self.x))
        return self.x[low:high], self.y[low:high]


def py_dataset(tmp_path: Path) -> list[Fit]:
    """A ``PyDataset`` with 2 worker threads for training and one for validation, on a small
    CIFAR-like convnet (32x32x3 -> 8x8x3, 10 classes, 250 + 90 images, batch 32)."""
    x, y = images(340, 8, 3, 10, seed=9)
    x_train, y_train, x_val, y_val = x[:250], y[:250], x[250:], y[250:]
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            layers.Conv2D(8, 3, activation="relu"),
            layers.GlobalAveragePooling2D(),
            layers.Dense(10, activation="softmax"),
        ]
    )
    counter = ConfusionCounts(10)
    model.compile(
        optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy", counter]
    )
    train = CIFAR10PyDataset(x_train, y_train, 32, workers=2)
    val = CIFAR10PyDataset(x_val, y_val, 32)
    fit_kwargs = dict(epochs=2, validation_data=val, verbose=0)
    history, counts = fit_and_record(model, {None: counter}, train, **fit_kwargs)
    scores = model.predict(val, verbose=0)
    return [
        Fit(
            history,
            [head(None, "multiclass", 10, y_val, scores, counts)],
            validated(fit_kwargs, history),
        )
    ]


NUMERIC_FEATURES = ["age", "trestbps", "chol", "thalach", "oldpeak", "slope"]
CATEGORICAL_FEATURES = {"sex": [0, 1], "cp": [0, 1, 2, 3, 4], "thal": ["fixed", "normal"]}


class Classifier(keras.layers.Layer):
    """keras-io structured_data_classification_from_scratch.py: the sigmoid head inside a
    custom layer, the model's output layer."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.dense_1 = layers.Dense(32, activation="relu")
        self.dropout = layers.Dropout(0.5)
        self.dense_2 = layers.Dense(1, activation="sigmoid")

    def call(self, inputs):
        all_features = layers.concatenate(list(inputs.values()))
        x = self.dense_1(all_features)
        x = self.dropout(x)
        return self.dense_2(x)

    def build(self, input_shape):
        self.built = True


def _heart_rows(n, seed):
    """Heart-disease-like rows: 6 numeric and 3 categorical features, ~30 % positive."""
    rng = np.random.default_rng(seed)
    target = (rng.random(n) < 0.3).astype("int64")
    columns = {
        name: (rng.normal(size=n) * (5 + i) + 50 + 8 * target * (1 if i % 2 else -1)).astype(
            "float32"
        )
        for i, name in enumerate(NUMERIC_FEATURES)
    }
    columns["sex"] = rng.integers(0, 2, n).astype("int64")
    columns["cp"] = np.where(target == 1, rng.integers(3, 5, n), rng.integers(0, 3, n))
    columns["thal"] = np.where(rng.random(n) < 0.5 + 0.3 * target, "fixed", "normal")
    return columns, target


def functional_preprocessing(tmp_path: Path) -> list[Fit]:
    """keras-io examples/structured_data/structured_data_classification_from_scratch.py:
    dict inputs, ``IntegerLookup``/``StringLookup(output_mode="binary")`` in the ``tf.data``
    map, an adapted ``Normalization`` per numeric input inside the functional model, and
    ``compile("adam", "binary_crossentropy", metrics=["accuracy"])``. 303 -> 240 + 80 rows,
    50 epochs -> 2. Both datasets are shuffled as there, so validation predictions are taken
    batch by batch with their labels."""

    def encode_categorical(features, target):
        for feature_name in features:
            if feature_name in CATEGORICAL_FEATURES:
                lookup_class = (
                    layers.StringLookup
                    if features[feature_name].dtype == "string"
                    else layers.IntegerLookup
                )
                index = lookup_class(
                    vocabulary=CATEGORICAL_FEATURES[feature_name],
                    mask_token=None,
                    num_oov_indices=0,
                    output_mode="binary",
                )
                features[feature_name] = index(features[feature_name])
        return dict(features), target

    def dataframe_to_dataset(columns, target):
        ds = tf.data.Dataset.from_tensor_slices((dict(columns), target)).map(encode_categorical)
        return ds.shuffle(buffer_size=len(target), seed=0)

    train_columns, train_target = _heart_rows(240, seed=10)
    val_columns, val_target = _heart_rows(80, seed=11)
    train_ds = dataframe_to_dataset(train_columns, train_target)
    val_ds = dataframe_to_dataset(val_columns, val_target)
    train_ds = train_ds.batch(32)
    val_ds = val_ds.batch(32)

    def encode_numerical_feature(feature, name, dataset):
        normalizer = layers.Normalization()
        feature_ds = dataset.map(lambda x, y: x[name])
        feature_ds = feature_ds.map(lambda x: tf.expand_dims(x, -1))
        normalizer.adapt(feature_ds)
        return normalizer(feature)

    inputs, encoded = {}, {}
    for feature_name in [*NUMERIC_FEATURES, *CATEGORICAL_FEATURES]:
        if feature_name in CATEGORICAL_FEATURES:
            inputs[feature_name] = layers.Input(
                name=feature_name, shape=(len(CATEGORICAL_FEATURES[feature_name]),), dtype="int64"
            )
            encoded[feature_name] = inputs[feature_name]
        else:
            inputs[feature_name] = layers.Input(name=feature_name, shape=(1,), dtype="float32")
            encoded[feature_name] = encode_numerical_feature(
                inputs[feature_name], feature_name, train_ds
            )
    keras.utils.set_random_seed(0)
    output = Classifier()(encoded)
    model = keras.Model(inputs, output)
    counter = ConfusionCounts(2, task="binary")
    model.compile("adam", "binary_crossentropy", metrics=["accuracy", counter])
    fit_kwargs = dict(epochs=2, validation_data=val_ds, verbose=0)
    history, counts = fit_and_record(model, {None: counter}, train_ds, **fit_kwargs)
    scores, labels = [], []
    for features, target in val_ds:
        scores.append(ops.convert_to_numpy(model(features, training=False)))
        labels.append(target.numpy())
    return [
        Fit(
            history,
            [head(None, "binary", 2, np.concatenate(labels), np.concatenate(scores), counts)],
            validated(fit_kwargs, history),
        )
    ]


def pretrained_backbone_fine_tune(tmp_path: Path) -> list[Fit]:
    """keras-io guides/transfer_learning.py, end-to-end example: augmentation, ``Rescaling``,
    a frozen base model called with ``training=False``, ``Dense(1)`` logits with
    ``BinaryCrossentropy(from_logits=True)``; then ``base_model.trainable = True``, recompile
    with ``Adam(1e-5)`` and fit again. The base model is a small conv stack with batch norm
    standing in for Xception (no weights download); 150x150 -> 12x12, epochs 20/10 -> 2/2."""
    x, y = images(200, 12, 3, 2, seed=12, scale=255.0)
    train_ds = tf.data.Dataset.from_tensor_slices((x[:140], y[:140]))
    validation_ds = tf.data.Dataset.from_tensor_slices((x[140:], y[140:]))
    train_ds = train_ds.cache().batch(32).prefetch(buffer_size=10)
    validation_ds = validation_ds.cache().batch(32).prefetch(buffer_size=10)
    keras.utils.set_random_seed(0)
    data_augmentation = keras.Sequential(
        [layers.RandomFlip("horizontal"), layers.RandomRotation(0.1)]
    )
    base_model = keras.Sequential(
        [
            keras.Input((12, 12, 3)),
            layers.Conv2D(8, 3, padding="same"),
            layers.BatchNormalization(),
            layers.Activation("relu"),
            layers.Conv2D(8, 3, padding="same"),
        ],
        name="base_model",
    )
    base_model.trainable = False
    inputs = keras.Input(shape=(12, 12, 3))
    x = data_augmentation(inputs)
    scale_layer = keras.layers.Rescaling(scale=1 / 127.5, offset=-1)
    x = scale_layer(x)
    x = base_model(x, training=False)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(0.2)(x)
    outputs = keras.layers.Dense(1)(x)
    model = keras.Model(inputs, outputs)

    fits = []
    for optimizer in (keras.optimizers.Adam(), keras.optimizers.Adam(1e-5)):
        if fits:
            base_model.trainable = True
        counter = ConfusionCounts(2, task="binary", from_logits=True)
        model.compile(
            optimizer=optimizer,
            loss=keras.losses.BinaryCrossentropy(from_logits=True),
            metrics=[keras.metrics.BinaryAccuracy(), counter],
        )
        fit_kwargs = dict(epochs=2, validation_data=validation_ds, verbose=0)
        history, counts = fit_and_record(model, {None: counter}, train_ds, **fit_kwargs)
        logits = model.predict(validation_ds, verbose=0)
        dog = head(
            None, "binary", 2, dataset_labels(validation_ds), logits, counts, from_logits=True
        )
        fits.append(Fit(history, [dog], validated(fit_kwargs, history)))
    return fits


def validation_split_early_stopping(tmp_path: Path) -> list[Fit]:
    """The built-in-methods guide's callbacks section: ``EarlyStopping(monitor="val_loss",
    min_delta=1e-2, patience=2)`` and ``validation_split=0.2``. Epochs 20 -> 2."""
    x_train, y_train, _, _ = _guide_mnist()
    counter = ConfusionCounts(10)
    model = get_compiled_model(counter)
    callbacks = [
        keras.callbacks.EarlyStopping(monitor="val_loss", min_delta=1e-2, patience=2, verbose=0)
    ]
    fit_kwargs = dict(epochs=2, batch_size=64, callbacks=callbacks, validation_split=0.2, verbose=0)
    split_at = int(math.ceil(len(x_train) * 0.8))
    return _guide_fit(
        (x_train, y_train), fit_kwargs, x_train[split_at:], y_train[split_at:], model, counter
    )


def validation_freq(tmp_path: Path) -> list[Fit]:
    """The guide's first end-to-end example (NumPy, ``validation_data``) with
    ``validation_freq=2``: epoch 0 has no validation, epoch 1 has."""
    x_train, y_train, x_val, y_val = _guide_mnist()
    counter = ConfusionCounts(10)
    model = get_compiled_model(counter)
    fit_kwargs = dict(
        batch_size=64, epochs=2, validation_data=(x_val, y_val), validation_freq=2, verbose=0
    )
    return _guide_fit((x_train, y_train), fit_kwargs, x_val, y_val, model, counter)


def mixed_precision(tmp_path: Path) -> list[Fit]:
    """TensorFlow's mixed-precision guide (``mixed_float16``): dense layers, ``Dense(10,
    name="dense_logits")`` and a float32 ``Activation("softmax")`` output, ``RMSprop``,
    ``validation_split=0.2``. Units 4096 -> 32, batch 8192 -> 128, epochs 5 -> 2."""
    x_train, y_train, _, _ = _guide_mnist(n_train=320)
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        keras.utils.set_random_seed(0)
        inputs = keras.Input(shape=(64,), name="digits")
        x = layers.Dense(32, activation="relu", name="dense_1")(inputs)
        x = layers.Dense(32, activation="relu", name="dense_2")(x)
        x = layers.Dense(10, name="dense_logits")(x)
        outputs = layers.Activation("softmax", dtype="float32", name="predictions")(x)
        model = keras.Model(inputs=inputs, outputs=outputs)
        counter = ConfusionCounts(10)
        model.compile(
            loss="sparse_categorical_crossentropy",
            optimizer=keras.optimizers.RMSprop(),
            metrics=["accuracy", counter],
        )
        fit_kwargs = dict(batch_size=128, epochs=2, validation_split=0.2, verbose=0)
        split_at = int(math.ceil(len(x_train) * 0.8))
        return _guide_fit(
            (x_train, y_train), fit_kwargs, x_train[split_at:], y_train[split_at:], model, counter
        )
    finally:
        keras.mixed_precision.set_global_policy("float32")


def jit_compile_sigmoid_head(tmp_path: Path) -> list[Fit]:
    """keras-io examples/vision/image_classification_from_scratch.py (cats vs dogs):
    ``Rescaling(1/255)``, residual separable-conv blocks, ``Dense(1, activation="sigmoid")``
    for 2 classes, ``binary_crossentropy``, ``jit_compile=True``, augmentation mapped into the
    training ``tf.data`` pipeline, ``ModelCheckpoint("save_at_{epoch}.keras")``.
    180x180 -> 12x12, blocks [128, 256, 512, 728] -> [8], 25 epochs -> 2; 128 + 64 images, so
    that every batch has one shape (XLA compiles each shape anew, a few seconds each here)."""
    x, y = images(192, 12, 3, 2, seed=13, priors=[0.55, 0.45], scale=255.0)
    train_ds = tf.data.Dataset.from_tensor_slices((x[:128], y[:128])).batch(32)
    val_ds = tf.data.Dataset.from_tensor_slices((x[128:], y[128:])).batch(32)
    keras.utils.set_random_seed(0)
    data_augmentation = keras.Sequential([layers.RandomFlip("horizontal")])
    train_ds = train_ds.map(
        lambda img, label: (data_augmentation(img), label), num_parallel_calls=tf.data.AUTOTUNE
    ).prefetch(tf.data.AUTOTUNE)

    inputs = keras.Input(shape=(12, 12, 3))
    h = layers.Rescaling(1.0 / 255)(inputs)
    h = layers.Conv2D(8, 3, strides=2, padding="same")(h)
    h = layers.BatchNormalization()(h)
    h = layers.Activation("relu")(h)
    previous_block_activation = h
    for size in [8]:
        h = layers.Activation("relu")(h)
        h = layers.SeparableConv2D(size, 3, padding="same")(h)
        h = layers.BatchNormalization()(h)
        h = layers.MaxPooling2D(3, strides=2, padding="same")(h)
        residual = layers.Conv2D(size, 1, strides=2, padding="same")(previous_block_activation)
        h = layers.add([h, residual])
        previous_block_activation = h
    h = layers.GlobalAveragePooling2D()(h)
    h = layers.Dropout(0.5)(h)
    outputs = layers.Dense(1, activation="sigmoid")(h)
    model = keras.Model(inputs, outputs)

    counter = ConfusionCounts(2, task="binary")
    callbacks = [keras.callbacks.ModelCheckpoint(str(tmp_path / "save_at_{epoch}.keras"))]
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss="binary_crossentropy",
        metrics=["accuracy", counter],
        jit_compile=True,
    )
    fit_kwargs = dict(epochs=2, callbacks=callbacks, validation_data=val_ds, verbose=0)
    history, counts = fit_and_record(model, {None: counter}, train_ds, **fit_kwargs)
    scores = model.predict(val_ds, verbose=0)
    return [
        Fit(
            history,
            [head(None, "binary", 2, y[128:], scores, counts)],
            validated(fit_kwargs, history),
        )
    ]


def steps_per_epoch_repeat(tmp_path: Path) -> list[Fit]:
    """The guide's ``steps_per_epoch`` section, on an infinitely repeated dataset (the guide:
    "unless it is an infinitely-looping dataset"), with a validation dataset. 100 -> 3 steps
    of 64, epochs 3 -> 2."""
    x_train, y_train, x_val, y_val = _guide_mnist()
    counter = ConfusionCounts(10)
    model = get_compiled_model(counter)
    train_dataset = tf.data.Dataset.from_tensor_slices((x_train, y_train))
    train_dataset = train_dataset.shuffle(buffer_size=1024, seed=0).batch(64).repeat()
    val_dataset = tf.data.Dataset.from_tensor_slices((x_val, y_val)).batch(64)
    fit_kwargs = dict(epochs=2, steps_per_epoch=3, validation_data=val_dataset, verbose=0)
    return _guide_fit((train_dataset,), fit_kwargs, x_val, y_val, model, counter)


def softmax_layer_output(tmp_path: Path) -> list[Fit]:
    """TensorFlow's beginner quickstart (Fashion-MNIST) with its ``Softmax()`` layer as the
    trained model's output (the tutorial appends it after training): ``Flatten``,
    ``Dense(128, relu)``, ``Dropout(0.2)``, ``Dense(10)``, ``Softmax()``. 28x28 -> 8x8,
    128 -> 16 units, 5 epochs -> 2."""
    x, y = images(400, 8, 1, 10, seed=14)
    x_train, y_train, x_test, y_test = x[:300, ..., 0], y[:300], x[300:, ..., 0], y[300:]
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.layers.Input((8, 8)),
            keras.layers.Flatten(),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.Dropout(0.2),
            keras.layers.Dense(10),
            keras.layers.Softmax(),
        ]
    )
    counter = ConfusionCounts(10)
    model.compile(
        optimizer="adam",
        loss=keras.losses.SparseCategoricalCrossentropy(),
        metrics=["accuracy", counter],
    )
    fit_kwargs = dict(epochs=2, validation_data=(x_test, y_test), verbose=0)
    history, counts = fit_and_record(model, {None: counter}, x_train, y_train, **fit_kwargs)
    scores = model.predict(x_test, verbose=0)
    return [
        Fit(
            history,
            [head(None, "multiclass", 10, y_test, scores, counts)],
            validated(fit_kwargs, history),
        )
    ]


def early_stopping_restore_best(tmp_path: Path) -> list[Fit]:
    """What this package's README advertises, on the guide's model:
    ``EarlyStopping(monitor="val_f1_macro", restore_best_weights=True)`` and
    ``ModelCheckpoint(monitor="val_f1_macro", save_best_only=True)``, with ``mode="max"``:
    without this package Keras cannot tell the direction of a metric it does not know and
    ``fit()`` raises at once under ``mode="auto"`` (that ``mode="auto"`` works with the package
    is test_coexistence.py's ``test_monitors_on_val_f1_macro_work_with_mode_auto``).
    ``min_delta=0.5`` with ``patience=1``: epoch 0 is the best (no later epoch gains half of
    the F1 scale), training stops after epoch 1 and the model ends with epoch 0's weights —
    the case of issue 27, item 6, made certain."""
    x_train, y_train, x_val, y_val = _guide_mnist()
    counter = ConfusionCounts(10)
    model = get_compiled_model(counter)
    stopper = keras.callbacks.EarlyStopping(
        monitor="val_f1_macro", mode="max", min_delta=0.5, patience=1, restore_best_weights=True
    )
    callbacks = [
        stopper,
        keras.callbacks.ModelCheckpoint(
            str(tmp_path / "best.keras"), monitor="val_f1_macro", mode="max", save_best_only=True
        ),
    ]
    fit_kwargs = dict(
        batch_size=64, epochs=4, validation_data=(x_val, y_val), callbacks=callbacks, verbose=0
    )
    fits = _guide_fit((x_train, y_train), fit_kwargs, x_val, y_val, model, counter)
    if stopper.best_weights is not None:
        fits[0].restored_epoch = stopper.best_epoch
    return fits


def mlflow_tf_dataset_without_batch_size(tmp_path: Path) -> list[Fit]:
    """MLflow's tests/tensorflow/test_tensorflow2_autolog.py::
    test_tf_keras_autolog_succeeds_for_tf_datasets_lacking_batch_size_info: a
    ``Dense(10, activation="sigmoid")`` output trained with
    ``SparseCategoricalCrossentropy(from_logits=False)`` on ``batch(50).cache().prefetch(5)``.
    Epochs 100 -> 2; the counting metric added to ``metrics=["accuracy"]``."""
    rng = np.random.default_rng(15)
    X_train = rng.random((100, 100))
    y_train = rng.integers(0, 10, 100)
    train_ds = tf.data.Dataset.from_tensor_slices((X_train, y_train))
    train_ds = train_ds.batch(50)
    train_ds = train_ds.cache().prefetch(buffer_size=5)
    keras.utils.set_random_seed(0)
    model = keras.Sequential()
    model.add(keras.Input((100,)))
    model.add(keras.layers.Dense(256, activation="relu"))
    model.add(keras.layers.Dropout(rate=0.4))
    model.add(keras.layers.Dense(10, activation="sigmoid"))
    counter = ConfusionCounts(10)
    model.compile(
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=False),
        optimizer="Adam",
        metrics=["accuracy", counter],
    )
    history, counts = fit_and_record(model, {None: counter}, train_ds, epochs=2, verbose=0)
    digits = Head(None, "multiclass", [str(c) for c in range(10)])
    digits.train_counts = dict(counts.by_head[None])
    return [Fit(history, [digits], [])]


SPECIES = ["cat", "dog", "bird", "fish", "frog"]


def multi_output_class_names_list(tmp_path: Path) -> list[Fit]:
    """The built-in-methods guide's multi-input, multi-output model (image and time-series
    inputs, ``score_output`` regression and ``class_output`` over 5 classes, losses and
    metrics as dicts), with a second classification output ``flag`` (one sigmoid unit) so
    that the outputs' widths differ; ``autolog(class_names=<5 names>)`` is given as a list
    (issue 27, item 5). 32x32x3 -> 8x8x3, 100 -> 240 + 80 samples."""
    rng = np.random.default_rng(16)
    n = 320
    species = rng.choice(5, size=n, p=[0.4, 0.25, 0.15, 0.12, 0.08])
    flag = (rng.random(n) < 0.3).astype("float32")
    img_data = rng.normal(size=(n, 8, 8, 3)) + (0.8 * species + flag)[:, None, None, None]
    ts_data = rng.normal(size=(n, 6, 10)) + species[:, None, None] * 0.5
    score_targets = rng.random((n, 1))
    class_targets = keras.utils.to_categorical(species, 5)

    keras.utils.set_random_seed(0)
    image_input = keras.Input(shape=(8, 8, 3), name="img_input")
    timeseries_input = keras.Input(shape=(None, 10), name="ts_input")
    x1 = layers.Conv2D(3, 3)(image_input)
    x1 = layers.GlobalMaxPooling2D()(x1)
    x2 = layers.Conv1D(3, 3)(timeseries_input)
    x2 = layers.GlobalMaxPooling1D()(x2)
    x = layers.concatenate([x1, x2])
    score_output = layers.Dense(1, name="score_output")(x)
    class_output = layers.Dense(5, activation="softmax", name="class_output")(x)
    flag_output = layers.Dense(1, activation="sigmoid", name="flag")(x)
    model = keras.Model(
        inputs=[image_input, timeseries_input], outputs=[score_output, class_output, flag_output]
    )
    counters = {
        "class_output": ConfusionCounts(5, sparse=False, name="class_counts"),
        "flag": ConfusionCounts(2, task="binary", name="flag_counts"),
    }
    model.compile(
        optimizer=keras.optimizers.RMSprop(1e-3),
        loss={
            "score_output": keras.losses.MeanSquaredError(),
            "class_output": keras.losses.CategoricalCrossentropy(),
            "flag": keras.losses.BinaryCrossentropy(),
        },
        metrics={
            "score_output": [keras.metrics.MeanAbsoluteError()],
            "class_output": [keras.metrics.CategoricalAccuracy(), counters["class_output"]],
            "flag": [counters["flag"]],
        },
    )
    train, val = slice(0, 240), slice(240, n)

    def inputs(rows):
        return {"img_input": img_data[rows], "ts_input": ts_data[rows]}

    def targets(rows):
        return {
            "score_output": score_targets[rows],
            "class_output": class_targets[rows],
            "flag": flag[rows],
        }

    fit_kwargs = dict(
        batch_size=32, epochs=2, validation_data=(inputs(val), targets(val)), verbose=0
    )
    history, counts = fit_and_record(model, counters, inputs(train), targets(train), **fit_kwargs)
    predictions = model.predict(inputs(val), verbose=0)
    return [
        Fit(
            history,
            [
                head(
                    "class_output",
                    "multiclass",
                    5,
                    species[val],
                    predictions[1],
                    counts,
                    names=SPECIES,
                ),
                head("flag", "binary", 2, flag[val], predictions[2], counts),
            ],
            validated(fit_kwargs, history),
        )
    ]


PatternFunction = Callable[[Path], list[Fit]]
