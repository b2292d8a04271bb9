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

The metric is created as soon as the output shape is known: at the start of ``fit()`` for a
built model, else (TensorFlow builds an unbuilt model inside its first traced step) at the first
step, where Keras creates the model's own weights too.

Detection rules (per output; an explicit ``task`` wins for a single-output model):

1. a loss whose name or class name says classification (``*crossentropy*``, ``*hinge*``,
   ``*focal*``, ``ldam``) makes the output a classification output;
2. a regression loss (``mse``, ``mae``, ``huber``, ``log_cosh``, ``poisson``, ...) makes it not;
3. any other loss: a softmax or sigmoid output layer makes it a classification output.

One unit is ``binary``; several units with a binary loss or a sigmoid are ``multilabel``;
otherwise ``multiclass``. ``from_logits``: softmax/sigmoid output -> probabilities; a linear
output -> logits; unknown -> the loss's own ``from_logits``.
"""

from __future__ import annotations

import dataclasses
import re
import weakref
from collections.abc import Mapping, Sequence

import keras

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
    {
        "mean_squared_error",
        "mse",
        "mean_absolute_error",
        "mae",
        "mean_absolute_percentage_error",
        "mape",
        "mean_squared_logarithmic_error",
        "msle",
        "huber",
        "huber_loss",
        "log_cosh",
        "logcosh",
        "cosine_similarity",
        "poisson",
        "kl_divergence",
        "kld",
        "kullback_leibler_divergence",
        "ctc",
        "dice",
        "tversky",
        "circle",
    }
)


@dataclasses.dataclass(frozen=True)
class OutputSpec:
    """A classification output: its Keras name (``None`` for a single-output model), index,
    task (``None``: decided from the width once known) and whether it outputs logits."""

    name: str | None
    index: int
    task: str | None
    from_logits: bool


def _loss_name_and_logits(loss) -> tuple[str, str, bool | None]:
    """A compiled loss's snake_case name, its class name in lower case (``""`` for strings and
    functions) and its ``from_logits``, where it says."""
    if isinstance(loss, str):
        return loss, "", None
    if isinstance(loss, keras.losses.Loss):
        # Keras' built-in losses wrap a function (BinaryCrossentropy.fn = binary_crossentropy).
        name = getattr(getattr(loss, "fn", None), "__name__", None) or loss.name
        return name, type(loss).__name__.lower(), loss.get_config().get("from_logits")
    return getattr(loss, "__name__", "") or "", "", None


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


def _output_layers(model: keras.Model) -> list:
    """The layer producing each output, where the model says (``[None]`` if it does not)."""
    outputs = _model_outputs(model)
    if outputs:
        return [getattr(getattr(o, "_keras_history", None), "operation", None) for o in outputs]
    if isinstance(model, keras.Sequential) and model.layers:
        return [model.layers[-1]]
    return [None]


def _output_names(model: keras.Model, count: int) -> list[str | None]:
    if count == 1:
        return [None]
    return list(model.output_names)


def classification_outputs(
    model: keras.Model, task: str = "auto", from_logits: bool | str = "auto"
) -> tuple[list[OutputSpec], list[str]]:
    """The model's classification outputs, and a reason for each output left out.

    See the module docstring for the rules; ``task``/``from_logits`` other than ``"auto"`` win.
    """
    layers = _output_layers(model)
    names = _output_names(model, len(layers))
    compiled_loss = getattr(model, "loss", None)
    specs, skipped = [], []
    for index, (name, layer) in enumerate(zip(names, layers, strict=True)):
        loss_name, loss_class, loss_logits = _loss_name_and_logits(
            _loss_of_output(compiled_loss, name, index)
        )
        activation = _activation_name(layer)
        output = f"output {name!r}" if name else "the output"
        forced = task != "auto" and len(layers) == 1
        if loss_name in _REGRESSION_LOSSES and not forced:
            skipped.append(f"{output} has a regression loss ({loss_name!r})")
            continue
        says_classification = _CLASSIFICATION_LOSS.search(f"{loss_name} {loss_class}")
        if not (forced or says_classification or activation in ("softmax", "sigmoid")):
            skipped.append(
                f"{output} is neither softmax/sigmoid nor trained with a classification loss "
                f"(loss {loss_name or 'unknown'!r}); pass task=... to autolog() to include it"
            )
            continue
        if task != "auto":
            output_task = task
        elif "binary" in f"{loss_name} {loss_class}" or activation == "sigmoid":
            output_task = "binary-or-multilabel"
        else:
            output_task = "multiclass"
        if from_logits != "auto":
            logits = bool(from_logits)
        elif activation in ("softmax", "sigmoid"):
            logits = False
        elif activation == "linear":
            logits = True
        else:
            logits = bool(loss_logits)
        specs.append(OutputSpec(name, index, output_task, logits))
    return specs, skipped


def _task_for_width(task: str, width: int) -> tuple[str, int]:
    """``(task, num_classes)`` once the output width is known."""
    if task == "binary-or-multilabel":
        task = "binary" if width == 1 else "multilabel"
    if task == "binary":
        return task, 2
    return task, int(width)


class FitClassificationMetrics(ClassificationMetrics):
    """The metric ``autolog()`` adds for one fit: never registered with Keras' serialization,
    because it never enters a saved model (see :class:`ClassificationMetrics`)."""


class MetricsHolder(MetricsList):
    """The metrics of one fit, tracked by the model. A Keras ``MetricsList``, so that
    ``EarlyStopping``/``ModelCheckpoint``/``ReduceLROnPlateau`` find each metric's direction
    (``mode="auto"``), and its results land in the logs as ``{name: value}``."""

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
        outputs: what :func:`classification_outputs` found.
        metric_kwargs: ``threshold``, ``ignore_class``, ``pr_thresholds``, ``zero_division``.

    Attributes:
        metrics: ``{output name (None for a single output): metric}``, filled when the
            output shapes are known.
    """

    def __init__(self, model: keras.Model, outputs: Sequence[OutputSpec], metric_kwargs: Mapping):
        self.model = model
        self.outputs = list(outputs)
        self.metric_kwargs = dict(metric_kwargs)
        self.metrics: dict[str | None, ClassificationMetrics] = {}
        self.holder = MetricsHolder([], name="mcmetrics")
        self._attached = False

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

    def attach(self) -> None:
        """Track the metrics in the model and feed them from its train and test steps."""
        detach_previous(self.model)
        shapes = _output_shapes(self.model)
        if shapes is not None:
            strategy = getattr(self.model, "distribute_strategy", None)
            # Under tf.distribute the variables must be created in the model's strategy scope.
            if strategy is not None:
                with strategy.scope():
                    self._build(shapes)
            else:
                self._build(shapes)
        model_compute_metrics = self.model.compute_metrics

        def compute_metrics(x, y, y_pred, sample_weight=None):
            if not self.metrics:  # TensorFlow: the first traced step built the model just now
                self._build([tuple(p.shape) for p in keras.tree.flatten(y_pred)])
            for spec in self.outputs:
                self.metrics[spec.name].update_state(
                    _select(y, spec.name, spec.index),
                    _select(y_pred, spec.name, spec.index),
                    _select(sample_weight, spec.name, spec.index),
                )
            return model_compute_metrics(x, y, y_pred, sample_weight)

        self.model._metrics.append(self.holder)
        self.model.compute_metrics = compute_metrics
        _ATTACHED[self.model] = self
        self._forget_step_functions()
        self._attached = True

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
