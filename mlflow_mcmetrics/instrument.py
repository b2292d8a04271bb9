"""Which outputs of a Keras model classify, and adding the metric to them for one ``fit()``.

``autolog()`` never touches ``compile()``: the user's compile config, what ``load_model`` rebuilds
and what ``evaluate()`` returns stay exactly as the user made them. For the duration of one
``fit()``, :class:`FitInstrumentation` instead

* appends a :class:`MetricsHolder` to the model's own tracked metrics, so that Keras resets it
  with the other metrics, returns its ``f1_macro`` in the epoch logs (``val_f1_macro`` for
  ``EarlyStopping``), and hands its variables to the compiled JAX step;
* wraps the model's ``compute_metrics`` on the instance, so that every train and test step
  feeds the predictions Keras already computed to the metric (no extra forward pass);
* and undoes both when training ends, forcing Keras to rebuild its step functions.

The metric counts samples, as Keras' ``metrics=`` do: ``class_weight`` and ``sample_weight``
shape the loss, not the logged counts (``weighted_metrics=True`` counts them, as Keras'
``weighted_metrics=``).

Detection rules (per output; an explicit ``task`` wins for a single-output model):

1. a regression loss (``mse``, ``mae``, ``huber``, ``log_cosh``, ``poisson``, ...) makes the
   output a regression output, left alone without a word;
2. a loss whose name or class name says classification (``*crossentropy*``, ``*hinge*``,
   ``*focal*``, ``ldam``) makes it a classification output;
3. any other loss: a softmax or sigmoid output layer makes it one.

The task: a loss that names the label format decides (``sparse_categorical_*`` and
``categorical_*``: ``multiclass``; ``binary_*``: ``binary`` for one unit, else ``multilabel``);
otherwise a sigmoid output is binary or multilabel and anything else multiclass.
``from_logits``: softmax/sigmoid output -> probabilities; a linear output -> logits; unknown ->
the loss's own ``from_logits``.

A subclassed model has no output layer to read before training: its outputs are decided at its
first step, from the layers its ``call`` ends in (traced symbolically on the step's input
shapes, once). An output that still cannot be told apart, and one whose labels do not fit the
decided task, is named in one :class:`~.events.MCMetricsWarning` with the argument that fixes
it, and left out; nothing wrong ever reaches the compiled step.
"""

from __future__ import annotations

import dataclasses
import re
import weakref
from collections.abc import Mapping, Sequence

import keras

from mlflow_mcmetrics.events import warn
from mlflow_mcmetrics.metrics import ClassificationMetrics

try:
    # Keras' monitors (EarlyStopping & co., mode="auto") read a metric's direction only from
    # inside its CompileMetrics or MetricsList.
    from keras.src.trainers.compile_utils import MetricsList
except ImportError:  # not public API: without it the metrics work, mode="auto" cannot see them

    class MetricsList(keras.metrics.Metric):
        def __init__(self, metrics, name="metrics_list"):
            super().__init__(name=name)
            self.metrics = metrics

        def update_state(self, y_true, y_pred, sample_weight=None):
            for metric in self.metrics:
                metric.update_state(y_true, y_pred, sample_weight=sample_weight)

        def reset_state(self):
            for metric in self.metrics:
                metric.reset_state()

        def get_result(self):
            return {metric.name: metric.result() for metric in self.metrics}


__all__ = [
    "FitClassificationMetrics",
    "FitInstrumentation",
    "MetricsHolder",
    "OutputSpec",
    "classification_outputs",
]

_CLASSIFICATION_LOSS = re.compile(r"crossentropy|hinge|focal|ldam")
_REGRESSION_LOSSES = frozenset(
    "mean_squared_error mse mean_absolute_error mae mean_absolute_percentage_error mape "
    "mean_squared_logarithmic_error msle huber huber_loss log_cosh logcosh cosine_similarity "
    "poisson kl_divergence kld kullback_leibler_divergence ctc dice tversky circle".split()
)
#: The task an output's width decides: one unit is binary, several multilabel.
BINARY_OR_MULTILABEL = "binary-or-multilabel"


@dataclasses.dataclass(frozen=True)
class OutputSpec:
    """A classification output: its Keras name (``None`` for a single-output model), index,
    task (:data:`BINARY_OR_MULTILABEL` until the width is known) and whether it outputs
    logits."""

    name: str | None
    index: int
    task: str
    from_logits: bool

    @property
    def description(self) -> str:
        return f"output {self.name!r}" if self.name else "the model's output"


def _loss_name_and_logits(loss) -> tuple[str, bool | None]:
    """A compiled loss's snake_case name and class name in lower case, and its
    ``from_logits`` where it says."""
    if isinstance(loss, str):
        return loss, None
    if isinstance(loss, keras.losses.Loss):
        # Keras' built-in losses wrap a function (BinaryCrossentropy.fn = binary_crossentropy).
        name = getattr(getattr(loss, "fn", None), "__name__", None) or loss.name
        return f"{name} {type(loss).__name__.lower()}", loss.get_config().get("from_logits")
    return getattr(loss, "__name__", "") or "", None


def _loss_of_output(loss, name: str | None, index: int):
    if isinstance(loss, Mapping):
        return loss.get(name)
    if isinstance(loss, (list, tuple)):
        return loss[index] if index < len(loss) else None
    return loss


def _activation_name(layer) -> str | None:
    if layer is None:
        return None
    if isinstance(layer, keras.layers.Softmax):
        return "softmax"
    activation = getattr(layer, "activation", None)
    return getattr(activation, "__name__", None)


def _model_outputs(model: keras.Model) -> list | None:
    """The model's symbolic outputs; None for a Sequential without Input or a subclassed model."""
    try:
        return model.outputs
    except (AttributeError, ValueError):
        return None


def _producing_layers(outputs) -> list:
    return [getattr(getattr(o, "_keras_history", None), "operation", None) for o in outputs]


def _output_layers(model: keras.Model) -> list | None:
    """The layer producing each output, where the model says; None for a subclassed model."""
    outputs = _model_outputs(model)
    if outputs:
        return _producing_layers(outputs)
    if isinstance(model, keras.Sequential) and model.layers:
        return [model.layers[-1]]
    return None


def _called_output_layers(model: keras.Model, x) -> list | None:
    """The layers a built subclassed model's ``call`` ends in, from a symbolic call on the
    shapes of ``x`` (its weights exist: nothing is created or drawn); None if it cannot be
    traced so."""
    try:
        inputs = keras.tree.map_structure(lambda t: keras.KerasTensor(t.shape, t.dtype), x)
        return _producing_layers(keras.tree.flatten(model.call(inputs)))
    except Exception:  # noqa: BLE001 - any failure: the output stays undecided
        return None


def _classify(layer, loss, task: str, from_logits, forced: bool) -> tuple | str | None:
    """One output's ``(task, from_logits)``; a reason string for an output left out (``""``:
    a regression output, left out without a word); None while the layer is unknown and the
    loss does not say."""
    loss_name, loss_logits = _loss_name_and_logits(loss)
    activation = _activation_name(layer)
    if not forced and loss_name.split(" ")[0] in _REGRESSION_LOSSES:
        return ""
    says_classification = _CLASSIFICATION_LOSS.search(loss_name)
    if not (forced or says_classification or activation in ("softmax", "sigmoid")):
        if layer is None:
            return None
        return (
            f"it is neither softmax/sigmoid nor trained with a classification loss "
            f"(loss {loss_name.split(' ')[0] or 'unknown'!r})"
        )
    if task == "auto":
        if "categorical" in loss_name:  # sparse or one-hot class labels: one class per row
            task = "multiclass"
        elif "binary" in loss_name or activation == "sigmoid":
            task = BINARY_OR_MULTILABEL
        else:
            task = "multiclass"
    if from_logits != "auto":
        logits = bool(from_logits)
    elif activation in ("softmax", "sigmoid"):
        logits = False
    elif activation == "linear":
        logits = True
    else:
        logits = bool(loss_logits)
    return task, logits


def classification_outputs(
    model: keras.Model,
    task: str = "auto",
    from_logits: bool | str = "auto",
    layers: Sequence | None = None,
) -> tuple[list[OutputSpec], list[str], bool]:
    """The model's classification outputs, a reason for each output left out that the user
    should hear of, and whether some output cannot be decided before the first step.

    See the module docstring for the rules; ``task``/``from_logits`` other than ``"auto"`` win.
    ``layers``: the layer producing each output, when known otherwise (a subclassed model).
    """
    if layers is None:
        layers = _output_layers(model)
    unknown_layers = layers is None
    layers = layers or [None]
    names = [None] if len(layers) == 1 else list(getattr(model, "output_names", None) or [])
    names += [f"output_{index}" for index in range(len(names), len(layers))]
    compiled_loss = getattr(model, "loss", None)
    specs, skipped, undecided = [], [], False
    for index, (name, layer) in enumerate(zip(names, layers, strict=True)):
        decision = _classify(
            layer,
            _loss_of_output(compiled_loss, name, index),
            task,
            from_logits,
            forced=task != "auto" and len(layers) == 1,
        )
        if decision is None:
            if unknown_layers:
                undecided = True
                continue
            decision = "its output layer is unknown and its loss does not say it classifies"
        if isinstance(decision, str):
            if decision:
                where = f"output {name!r}" if name else "the model's output"
                skipped.append(f"{where}: {decision}")
        else:
            specs.append(OutputSpec(name, index, *decision))
    return specs, skipped, undecided


def _task_for_width(task: str, width: int) -> tuple[str, int]:
    """``(task, num_classes)`` once the output width is known."""
    if task == BINARY_OR_MULTILABEL:
        task = "binary" if width == 1 else "multilabel"
    if task == "binary":
        return task, 2
    return task, int(width)


def _labels_fit(task: str, label_shape: tuple, prediction_shape: tuple) -> bool:
    """Whether labels of ``label_shape`` can be scored against predictions of
    ``prediction_shape`` for ``task`` (unknown dimensions fit anything)."""

    def same(a, b):
        return len(a) == len(b) and all(
            x is None or y is None or x == y for x, y in zip(a, b, strict=True)
        )

    rows = prediction_shape[:-1]
    if task == "multilabel":
        return same(label_shape, prediction_shape)
    # Class indices per row (optionally with a trailing axis of 1), or one-hot rows.
    return (
        same(label_shape, rows)
        or same(label_shape, (*rows, 1))
        or same(label_shape, prediction_shape)
    )


class FitClassificationMetrics(ClassificationMetrics):
    """The metric ``autolog()`` adds for one fit: never registered with Keras' serialization,
    because it never enters a saved model (see :class:`ClassificationMetrics`)."""


class MetricsHolder(MetricsList):
    """The metrics of one fit, tracked by the model. A Keras ``MetricsList``, so that
    ``EarlyStopping``/``ModelCheckpoint``/``ReduceLROnPlateau`` find each metric's direction
    (``mode="auto"``), and its results land in the logs as ``{name: value}``."""

    #: Called when a ``train_step`` feeds the metrics through this list (as Keras' guide's
    #: ``for metric in self.metrics: metric.update_state(y, y_pred)`` does).
    on_update = None

    def update_state(self, y_true, y_pred, sample_weight=None):
        super().update_state(y_true, y_pred, sample_weight=sample_weight)
        if self.on_update is not None:
            self.on_update()

    def result(self):
        return self.get_result()


def _select(structure, name: str | None, index: int):
    if name is None or structure is None:
        return structure
    if isinstance(structure, Mapping):
        return structure.get(name)
    if isinstance(structure, (list, tuple)):
        return structure[index]
    return structure


def _output_shapes(model: keras.Model) -> list[tuple] | None:
    """Each output's shape, if the model is built (``None``: known at the first step)."""
    outputs = _model_outputs(model)
    if outputs:
        return [tuple(o.shape) for o in outputs]
    build_shapes = getattr(model, "_build_shapes_dict", None) if model.built else None
    if not build_shapes or len(build_shapes) != 1:
        return None
    (input_shape,) = build_shapes.values()
    try:
        spec = keras.tree.map_shape_structure(lambda shape: keras.KerasTensor(shape), input_shape)
        output = model.compute_output_spec(spec)
    except Exception:  # noqa: BLE001 - the first step will tell
        return None
    return [tuple(o.shape) for o in keras.tree.flatten(output)]


class FitInstrumentation:
    """:class:`ClassificationMetrics` for the classification outputs of one ``fit()``.

    Args:
        model: the model being fitted.
        task, from_logits: ``autolog()``'s arguments (``"auto"`` or explicit).
        metric_kwargs: ``threshold``, ``ignore_class``, ``pr_thresholds``, ``zero_division``.
        weighted_metrics: feed Keras' ``sample_weight`` (which carries ``class_weight``) to the
            metrics, as Keras does for its ``weighted_metrics=``.
        silent: no warnings.

    Attributes:
        outputs: the classification outputs (filled at the first step for a subclassed model).
        metrics: ``{output name (None for a single output): metric}``, filled when the
            output shapes are known.
        split: ``"train"`` or ``"val"``: the split the steps being run belong to (the
            callback says).
        fed: the splits whose steps fed the metrics.
    """

    def __init__(
        self,
        model: keras.Model,
        task: str = "auto",
        from_logits: bool | str = "auto",
        metric_kwargs: Mapping | None = None,
        *,
        weighted_metrics: bool = False,
        silent: bool = False,
    ):
        self.model = model
        self.task = task
        self.from_logits = from_logits
        self.metric_kwargs = dict(metric_kwargs or {})
        self.weighted_metrics = weighted_metrics
        self.silent = silent
        self.outputs, skipped, undecided = classification_outputs(model, task, from_logits)
        self._warn_left_out(skipped)
        # A subclassed model whose loss does not say regression: its outputs are read at its
        # first step, from the layers its call() ends in.
        self.undecided = _output_layers(model) is None and (undecided or bool(self.outputs))
        self.metrics: dict[str | None, ClassificationMetrics] = {}
        self.holder = MetricsHolder([], name="mcmetrics")
        self.holder.on_update = lambda: self.fed.add(self.split)
        self.split = "train"
        self.fed: set[str] = set()
        self._misfit: set[str | None] = set()
        self._attached = False

    @property
    def active(self) -> bool:
        """Whether this fit may get metrics (some output classifies or is still undecided)."""
        return bool(self.outputs) or self.undecided

    def _warn_left_out(self, skipped: Sequence[str]) -> None:
        for reason in skipped:
            warn(
                f"mlflow_mcmetrics logs no per-class metrics for {reason}. If it classifies, "
                "pass task='multiclass', 'binary' or 'multilabel' (and from_logits=True for "
                "logits) to mlflow_mcmetrics.autolog().",
                silent=self.silent,
            )

    def _decide_at_first_step(self, x) -> None:
        """A subclassed model's outputs, from the layers its ``call`` ends in."""
        self.undecided = False
        layers = _called_output_layers(self.model, x)
        outputs, skipped, undecided = classification_outputs(
            self.model, self.task, self.from_logits, layers=layers
        )
        if undecided:
            skipped.append(
                "the model's output: its output layer cannot be read from the model and its "
                "loss does not say it classifies"
            )
        self._warn_left_out(skipped)
        self.outputs = outputs

    def _build(self, shapes: Sequence[tuple]) -> None:
        for spec in self.outputs:
            task, num_classes = _task_for_width(spec.task, shapes[spec.index][-1])
            name = "f1_macro" if spec.name is None else f"{spec.name}_f1_macro"
            metric = FitClassificationMetrics(
                num_classes,
                task=task,
                from_logits=spec.from_logits,
                name=name,
                **self.metric_kwargs,
            )
            self.metrics[spec.name] = metric
            self.holder.metrics.append(metric)

    def _labels_fit(self, spec: OutputSpec, y_true, y_pred) -> bool:
        """Whether the step's labels fit the output's task; warns once when they do not."""
        metric = self.metrics[spec.name]
        if _labels_fit(metric.task, tuple(y_true.shape), tuple(y_pred.shape)):
            return True
        if spec.name not in self._misfit:
            self._misfit.add(spec.name)
            warn(
                f"mlflow_mcmetrics logs no per-class metrics for {spec.description}: it was "
                f"taken as {metric.task} with {metric.num_classes} classes, but its labels have "
                f"shape {tuple(y_true.shape)} for predictions of shape {tuple(y_pred.shape)}. "
                "Pass task='multiclass', 'binary' or 'multilabel' to mlflow_mcmetrics.autolog().",
                silent=self.silent,
            )
        return False

    def _compute_metrics(self, x, y, y_pred, sample_weight=None):
        """The model's ``compute_metrics``, feeding the metrics first (traced into the step)."""
        if self.undecided:
            self._decide_at_first_step(x)
        if self.outputs and not self.metrics:
            # TensorFlow and subclassed models: the first traced step built the model just now.
            self._build([tuple(p.shape) for p in keras.tree.flatten(y_pred)])
        for spec in self.outputs:
            y_true, predictions = (_select(s, spec.name, spec.index) for s in (y, y_pred))
            if y_true is None or not self._labels_fit(spec, y_true, predictions):
                continue
            weights = _select(sample_weight, spec.name, spec.index)
            self.metrics[spec.name].update_state(
                y_true, predictions, weights if self.weighted_metrics else None
            )
            self.fed.add(self.split)
        return self._model_compute_metrics(x, y, y_pred, sample_weight)

    def attach(self) -> None:
        """Track the metrics in the model and feed them from its train and test steps."""
        detach_previous(self.model)
        shapes = _output_shapes(self.model) if self.outputs and not self.undecided else None
        if shapes is not None:
            strategy = getattr(self.model, "distribute_strategy", None)
            # Under tf.distribute the variables must be created in the model's strategy scope.
            if strategy is not None:
                with strategy.scope():
                    self._build(shapes)
            else:
                self._build(shapes)
        self._model_compute_metrics = self.model.compute_metrics
        self.model._metrics.append(self.holder)
        self.model.compute_metrics = self._compute_metrics
        _ATTACHED[self.model] = self
        self._forget_step_functions()
        self._attached = True

    def reset(self) -> None:
        """Reset the metrics where Keras does not (a ``metrics`` property that leaves them out:
        Keras resets only what it lists)."""
        if self.holder not in self.model.metrics:
            self.holder.reset_state()

    def detach(self) -> None:
        """Leave the model as it was before :meth:`attach`."""
        if not self._attached:
            return
        self._attached = False
        if self.holder in self.model._metrics:
            self.model._metrics.remove(self.holder)
        self.model.__dict__.pop("compute_metrics", None)
        _ATTACHED.pop(self.model, None)
        self._forget_step_functions()

    def _forget_step_functions(self) -> None:
        # Keras traces compute_metrics into its step functions once; what compile() does to
        # make it trace them again.
        self.model.train_function = None
        self.model.test_function = None


#: The instrumentation attached to each model; kept off the model so that nothing of ours is
#: saved with it.
_ATTACHED: weakref.WeakKeyDictionary[keras.Model, FitInstrumentation] = weakref.WeakKeyDictionary()


def detach_previous(model: keras.Model) -> None:
    """Undo the instrumentation of a fit that raised before its end (e.g. Ctrl-C)."""
    previous = _ATTACHED.get(model)
    if previous is not None:
        previous.detach()
