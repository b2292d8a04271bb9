"""Issue 27: the package on the Keras code people actually write.

Every pattern of :mod:`_keras_patterns` (public Keras example code, data replaced by tiny
synthetic data) runs in three modes: ``mlflow.autolog()`` alone, ``mlflow.autolog()`` then
``mlflow_mcmetrics.autolog()``, and ``mlflow_mcmetrics.autolog()`` alone; some also in the
reverse order (:data:`REVERSED_ORDER`); one ``fit()`` per example fit and mode. Checks, where
they apply:

* validation: the epoch the final artifacts describe (the last, or the one
  ``restore_best_weights`` went back to) has the confusion matrix of scikit-learn on
  ``model.predict`` after training, exactly, and its per-class precision/recall/F1 to 1e-6;
* training: that epoch's ``train_confusion_matrix.json`` equals Keras' own unweighted counts
  from the same fit (a counting metric in ``metrics=``; ``class_weight`` must not weight ours);
* MLflow: with ours added, MLflow's own tags, params and metric keys are those of the run
  without ours (the ``mlflow.autolog()``-alone mode), but for our additions and the differences
  each pattern lists with their reason, and its logged model is the same (files, ``MLmodel``
  but for ids and times, signature);
* no key is logged twice at one step;
* what the user must be told (a model the package cannot read, a ``train_step`` that does not
  feed the metric) is one ``MCMetricsWarning``, and nothing wrong is logged.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import re
import time
import warnings

import _keras_patterns as kp
import keras
import mlflow
import mlflow.keras.save
import numpy as np
import pytest
import yaml
from sklearn import metrics as skm
from test_training import expected_scores

import mlflow_mcmetrics
from mlflow_mcmetrics import MCMetricsWarning

pytestmark = pytest.mark.slow


@dataclasses.dataclass(frozen=True)
class Pattern:
    """A pattern and what the issue and SPEC say a user gets from it.

    ``detected``: the package finds its classification outputs (``None``: the issue allows
    either that, with exact values, or one visible warning naming ``task=`` and nothing
    logged). ``train_fed``: Keras feeds the training split to metrics (not so in a
    ``train_step`` that never calls ``compute_metrics``). ``warning``: the one
    ``MCMetricsWarning`` the user must see (a regular expression), else none at all.
    ``mlflow_differences``: MLflow metric keys that ours makes MLflow log, with the reason.
    ``mlflow_autolog``: arguments of ``mlflow.autolog()`` the pattern needs without ours.
    ``restores``: ``EarlyStopping(restore_best_weights=True)`` goes back to an earlier epoch
    when ours is on (the pattern's precondition, checked). ``data_warning``: warnings about
    the pattern's data itself (a regular expression) that the user may fairly be shown.
    """

    run: kp.PatternFunction
    ours: dict = dataclasses.field(default_factory=dict)
    detected: bool | None = True
    train_fed: bool = True
    warning: str | None = None
    mlflow_differences: dict = dataclasses.field(default_factory=dict)
    mlflow_autolog: dict = dataclasses.field(default_factory=dict)
    restores: bool = False
    data_warning: str | None = None


PATTERNS = {
    # The six of issue 27.
    "fraud_class_weight": Pattern(kp.fraud_class_weight),
    "multilabel_text_vectorization": Pattern(
        kp.multilabel_text_vectorization,
        # StringLookup(output_mode="multi_hot") keeps a unit for its OOV token, label 0, which
        # no sample has: saying that its scores are zero_division values is fair.
        data_warning=r"split has no samples of 1 class\(es\) \(0\)",
    ),
    # Issue 27, item 3: a subclassed model trained with a wrapped cross-entropy is found, or
    # the user is told once how to make it found.
    "ner_subclassed_custom_loss": Pattern(
        kp.ner_subclassed_custom_loss, detected=None, warning=r"task="
    ),
    "mnist_convnet": Pattern(kp.mnist_convnet),
    "custom_train_step_first": Pattern(kp.custom_train_step_first),
    # Issue 27, item 4: training never feeds the metric; validation (Keras' test_step) does.
    "custom_train_step_own_trackers": Pattern(
        kp.custom_train_step_own_trackers, train_fed=False, warning=r"train_step"
    ),
    "oxford_pets_segmentation": Pattern(kp.oxford_pets_segmentation),
    # Beyond them.
    "tf_data_class_weight": Pattern(kp.tf_data_class_weight),
    "py_dataset": Pattern(kp.py_dataset),
    "functional_preprocessing": Pattern(kp.functional_preprocessing),
    "pretrained_backbone_fine_tune": Pattern(kp.pretrained_backbone_fine_tune),
    "validation_split_early_stopping": Pattern(kp.validation_split_early_stopping),
    "validation_freq": Pattern(kp.validation_freq),
    "mixed_precision": Pattern(kp.mixed_precision),
    "jit_compile_sigmoid_head": Pattern(kp.jit_compile_sigmoid_head),
    "steps_per_epoch_repeat": Pattern(
        kp.steps_per_epoch_repeat,
        # MLflow hashes every element of a dataset it logs (mlflow/data/tensorflow_dataset.py,
        # _compute_tensorflow_dataset_digest): on an infinitely repeated dataset fit() never
        # starts and memory fills up, without ours too. What a user of this pattern must do.
        mlflow_autolog={"log_datasets": False},
    ),
    "softmax_layer_output": Pattern(kp.softmax_layer_output),
    "early_stopping_restore_best": Pattern(
        kp.early_stopping_restore_best,
        restores=True,
        mlflow_differences={
            # Without ours there is no val_f1_macro: EarlyStopping never stops, so MLflow's
            # TensorFlow autologging logs neither. With ours it stops and MLflow logs both.
            "stopped_epoch": "EarlyStopping monitors val_f1_macro, which only ours provides",
            "restored_epoch": "EarlyStopping monitors val_f1_macro, which only ours provides",
        },
    ),
    "mlflow_tf_dataset_without_batch_size": Pattern(kp.mlflow_tf_dataset_without_batch_size),
    "multi_output_class_names_list": Pattern(
        kp.multi_output_class_names_list,
        ours={"class_names": kp.SPECIES},
        # Issue 27, item 5: the names go to the output they fit, one warning says so.
        warning=r"flag",
    ),
}

MODES = {
    "mlflow": ("mlflow",),
    "mlflow+ours": ("mlflow", "ours"),
    "ours+mlflow": ("ours", "mlflow"),
    "ours": ("ours",),
}
#: Patterns also run with ``mlflow_mcmetrics.autolog()`` called before ``mlflow.autolog()``: one
#: of each way the two patches meet (class weights, a subclassed model, a custom ``train_step``,
#: restored weights, several outputs). Every other pattern behaves alike in both orders (both
#: were run for every pattern when issue 27 was closed); one order keeps the module's time down.
REVERSED_ORDER = {
    "fraud_class_weight",
    "ner_subclassed_custom_loss",
    "custom_train_step_first",
    "early_stopping_restore_best",
    "multi_output_class_names_list",
}
#: The order the cases run in: the baselines of a pattern before the modes compared with them.
CASES = [
    pytest.param(name, mode, id=f"{name}-{mode}")
    for name in PATTERNS
    for mode in ("mlflow", "ours", "mlflow+ours", "ours+mlflow")
    if mode != "ours+mlflow" or name in REVERSED_ORDER
]


# --------------------------------------------------------------------------------------------
# Running a pattern in a mode
# --------------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def requirements_without_a_subprocess(monkeypatch):
    """MLflow infers a logged model's pip requirements by loading the model in a subprocess,
    about 20 s a model here, 60 models in this module: its own fallback, the flavor's default
    requirements, stands in. That MLflow's logged model loads where this package is not
    installed is checked by test_coexistence.py."""

    def fallback(model_uri, flavor, fallback=None, **kwargs):
        return fallback

    monkeypatch.setattr(mlflow.models, "infer_pip_requirements", fallback)
    monkeypatch.setattr(mlflow.keras.save, "infer_pip_requirements", fallback)


def _enable_mlflow(**arguments) -> None:
    """``mlflow.autolog()`` again in this process: as MLflow's own test file does, its import
    hooks and integration configs are cleared first."""
    from mlflow.utils.autologging_utils import AUTOLOGGING_INTEGRATIONS

    for name in ("tensorflow", "keras"):
        mlflow.utils.import_hooks._post_import_hooks.pop(name, None)
        AUTOLOGGING_INTEGRATIONS.pop(name, None)
    mlflow.autolog(**arguments)


def _disable_all() -> None:
    mlflow_mcmetrics.autolog(disable=True)
    mlflow.autolog(disable=True)


@dataclasses.dataclass
class RunView:
    """What landed in one run: MLflow-side summary and every metric's history."""

    run_id: str
    tags: dict
    params: dict
    history: dict  # key -> [(step, value)]
    artifacts: set  # top-level artifact paths of the run
    model_files: set | None
    mlmodel: dict | None
    linked: dict | None  # (key, step) -> value linked to the logged model

    @property
    def keys(self) -> set:
        return set(self.history)

    def value(self, key: str, step: int) -> float:
        values = [value for s, value in self.history[key] if s == step]
        assert len(values) == 1, (key, step, self.history[key])
        return values[0]


#: MLmodel fields that differ between any two loggings of the same model.
_MLMODEL_IDS = {"run_id", "model_id", "utc_time_created", "model_uuid", "artifact_path"}


def _model_files(client, model_id, path=None) -> set:
    files = set()
    for info in client.list_logged_model_artifacts(model_id, path):
        if info.is_dir:
            files |= _model_files(client, model_id, info.path)
        else:
            files.add(info.path)
    return files


def view_of(client, run) -> RunView:
    run_id = run.info.run_id
    keys = sorted(run.data.metrics)
    # One request per key (100-300 here): side by side, they take a third of the time.
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        histories = pool.map(lambda key: client.get_metric_history(run_id, key), keys)
        history = {
            key: [(m.step, m.value) for m in points]
            for key, points in zip(keys, histories, strict=True)
        }
    artifacts = {info.path for info in client.list_artifacts(run_id)}
    models = mlflow.search_logged_models(
        filter_string=f"source_run_id = '{run_id}'", output_format="list"
    )
    model_files = mlmodel = linked = None
    if models:
        (model,) = models
        model_files = _model_files(client, model.model_id)

        mlmodel = {"status": str(model.status)}
        if "MLmodel" in model_files:  # MLflow may fail to save it (a subclassed model)
            local = mlflow.artifacts.download_artifacts(f"{model.artifact_location}/MLmodel")
            with open(local) as file:
                mlmodel.update(
                    (k, v) for k, v in yaml.safe_load(file).items() if k not in _MLMODEL_IDS
                )
        linked = {(m.key, m.step): m.value for m in model.metrics}
    return RunView(
        run_id,
        {k: v for k, v in run.data.tags.items() if k != "mlflow.runName"},
        dict(run.data.params),
        history,
        artifacts,
        model_files,
        mlmodel,
        linked,
    )


@dataclasses.dataclass
class Outcome:
    fits: list[kp.Fit]
    runs: list[RunView]
    ours_warnings: list[str]


def run_pattern(name: str, mode: str, experiment_id: str, tmp_path) -> Outcome:
    """Enable ``mode``'s autologging, train the pattern, and read back its runs."""
    client = mlflow.MlflowClient()
    pattern = PATTERNS[name]
    # Keras numbers layer and optimizer names per session ("adam_3"), and MLflow logs them
    # (opt_name): every pattern starts as in a fresh script.
    keras.backend.clear_session()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step in MODES[mode]:
            if step == "mlflow":
                _enable_mlflow(**pattern.mlflow_autolog)
            else:
                mlflow_mcmetrics.autolog(**pattern.ours)
        try:
            fits = pattern.run(tmp_path)
            if "ours" in MODES[mode]:
                mlflow_mcmetrics.flush()
        finally:
            _disable_all()
    runs = client.search_runs([experiment_id], order_by=["attributes.start_time ASC"])
    return Outcome(
        fits,
        [view_of(client, run) for run in runs],
        [
            str(w.message)
            for w in caught
            if issubclass(w.category, MCMetricsWarning)
            and not (pattern.data_warning and re.search(pattern.data_warning, str(w.message)))
        ],
    )


#: ``{pattern: {mode: [RunView]}}`` of the cases run so far, so that each mode's fit runs once.
_RUNS: dict[str, dict[str, list[RunView]]] = {}


def runs_of(name: str, mode: str, experiment_id: str, tmp_path) -> list[RunView]:
    """The runs of ``name`` in ``mode``: from the case run earlier in this session, else
    trained now in an experiment of its own (a case selected alone with ``-k``)."""
    if mode not in _RUNS.get(name, {}):
        other = mlflow.set_experiment(f"{name}-{mode}-{time.time_ns()}")
        try:
            outcome = run_pattern(name, mode, other.experiment_id, tmp_path / mode)
        finally:
            mlflow.set_experiment(experiment_id=experiment_id)
        _RUNS.setdefault(name, {})[mode] = outcome.runs
    return _RUNS[name][mode]


# --------------------------------------------------------------------------------------------
# The checks
# --------------------------------------------------------------------------------------------

#: Our metric-key families (SPEC section 3), after the split and output prefixes.
_OURS = re.compile(
    r"(f1|precision|recall|ap|roc_auc|threshold|f1_at_threshold)/|"
    r"(f1_(macro|micro|weighted)|precision_macro|recall_macro|map|roc_auc_macro|ece|"
    r"balanced_accuracy|mcc|cohen_kappa|recall_(many|medium|few)|f1_(many|medium|few)|"
    r"recall_gmean|.*worst.*|.*zero_recall.*)$"
)


def _prefixes(head: kp.Head) -> tuple[str, str]:
    """Key prefixes of a head's training and validation keys, artifact folder."""
    output = f"{head.output}_" if head.output else ""
    return output, f"val_{output}"


def _artifact_dir(head: kp.Head) -> str:
    return "mcmetrics" if head.output is None else f"mcmetrics/{head.output}"


def _load(run_id: str, path: str) -> dict:
    try:
        return mlflow.artifacts.load_dict(f"runs:/{run_id}/{path}")
    except mlflow.exceptions.MlflowException as error:
        raise AssertionError(f"{path} is not in the run") from error


def _sklearn_matrix(head: kp.Head) -> np.ndarray:
    width = len(head.names)
    if head.task == "multilabel":
        return skm.multilabel_confusion_matrix(head.val_true, head.val_pred, labels=range(width))
    return skm.confusion_matrix(head.val_true, head.val_pred, labels=range(width))


def _expand(matrix: np.ndarray, task: str) -> tuple[np.ndarray, np.ndarray]:
    """Label pairs with exactly the counts of ``matrix`` (multilabel: ``(L, 2, 2)``), so that
    scikit-learn scores Keras' own counts."""
    if task == "multilabel":
        per_label = [
            np.repeat(np.array([[0, 0], [0, 1], [1, 0], [1, 1]]), cell.reshape(4).astype(int), 0)
            for cell in matrix
        ]
        rows = max(len(p) for p in per_label)
        assert all(len(p) == rows for p in per_label)
        return np.stack([p[:, 0] for p in per_label], 1), np.stack([p[:, 1] for p in per_label], 1)
    pairs = [(t, p) for t in range(len(matrix)) for p in range(len(matrix))]
    counts = matrix.reshape(-1).astype(int)
    true = np.repeat([t for t, _ in pairs], counts)
    predicted = np.repeat([p for _, p in pairs], counts)
    return true, predicted


def _named(values: dict, names: list[str]) -> dict:
    """``expected_scores``' keys with class indices replaced by the logged class names."""
    renamed = {}
    for key, value in values.items():
        if "/" in key:
            family, index = key.rsplit("/", 1)
            key = f"{family}/{names[int(index)]}"
        renamed[key] = value
    return renamed


def check_no_key_twice_at_one_step(run: RunView, mlflow_on: bool) -> None:
    for key, points in run.history.items():
        if mlflow_on and key.startswith("validation_"):
            # MLflow's own: its callback's on_test_end logs every validation pass's logs as
            # validation_<key> without a step (mlflow/tensorflow/callback.py), so at step 0
            # once per epoch, without ours too.
            continue
        steps = [step for step, _ in points]
        assert len(steps) == len(set(steps)), f"{key} logged twice at one step: {points}"


def check_ours_on_fit(run: RunView, fit: kp.Fit, pattern: Pattern) -> None:
    """Our values of one fit against scikit-learn and Keras' own counts."""
    last = fit.epochs[-1]
    described = last if fit.restored_epoch is None else fit.restored_epoch
    for head in fit.heads:
        train_prefix, val_prefix = _prefixes(head)
        folder = _artifact_dir(head)
        labels = list(range(len(head.names)))
        params = run.params
        param = "mcmetrics." if head.output is None else f"mcmetrics.{head.output}."
        assert params[f"{param}task"] == head.task, head.output
        assert params[f"{param}num_classes"] == str(len(head.names)), head.output
        report = _load(run.run_id, f"{folder}/classification_report.json")
        # Issue 27, item 6: the final artifacts describe the weights the model ends with.
        assert report["epoch"] == described, (report["epoch"], described)

        if fit.validated_epochs:
            assert report["split"] == "val"
            logged = _load(run.run_id, f"{folder}/epochs/{described:04d}/val_confusion_matrix.json")
            assert logged["epoch"] == described and logged["split"] == "val"
            np.testing.assert_array_equal(logged["matrix"], _sklearn_matrix(head))
            expected = _named(
                expected_scores(head.val_true, head.val_pred, labels, val_prefix), head.names
            )
            for key, value in expected.items():
                assert run.value(key, described) == pytest.approx(value, abs=1e-6), key
                steps = sorted(step for step, _ in run.history[key])
                assert [s for s in steps if s <= last] == fit.validated_epochs, (key, steps)
                # A step past the last epoch only for the restored weights (MLflow's own
                # TensorFlow autologging logs the restored epoch's values at stopped_epoch + 1).
                for step in (s for s in steps if s > last):
                    assert fit.restored_epoch is not None, (key, steps)
                    assert run.value(key, step) == pytest.approx(value, abs=1e-6), key
            if run.linked is not None:
                for key, value in expected.items():
                    if "/" in key:
                        links = {s: v for (k, s), v in run.linked.items() if k == key}
                        assert links, f"{key} not linked to MLflow's logged model"
                        assert list(links.values()) == pytest.approx(
                            [value] * len(links), abs=1e-6
                        ), f"{key} linked to MLflow's model {links}, the model's {value}"
            if head.task != "multiclass":
                thresholds = _load(run.run_id, f"{folder}/thresholds.json")
                assert thresholds["epoch"] == described and thresholds["split"] == "val"
        else:
            assert report["split"] == "train"
            assert not [
                key
                for key in run.keys
                if key.startswith(val_prefix) and _OURS.match(key[len(val_prefix) :])
            ]

        if pattern.train_fed:
            logged = _load(
                run.run_id, f"{folder}/epochs/{described:04d}/train_confusion_matrix.json"
            )
            keras_counts = head.train_counts[described]
            # Issue 27, item 1: counted as Keras' metrics= count, one per sample.
            np.testing.assert_array_equal(logged["matrix"], keras_counts)
            true, predicted = _expand(np.asarray(keras_counts), head.task)
            expected = _named(expected_scores(true, predicted, labels, train_prefix), head.names)
            for key, value in expected.items():
                assert run.value(key, described) == pytest.approx(value, abs=1e-6), key
                steps = sorted(step for step, _ in run.history[key])
                assert [s for s in steps if s <= last] == fit.epochs, (key, steps)
        else:
            # Issue 27, item 4: a split whose metric was never fed is not logged at all.
            ours_train = [
                key
                for key in run.keys
                if not key.startswith("val_") and _OURS.match(key[len(train_prefix) :])
            ]
            assert not ours_train, ours_train
            epochs = mlflow.artifacts.list_artifacts(
                run_id=run.run_id, artifact_path=f"{folder}/epochs"
            )
            for epoch_dir in epochs:
                names = {
                    info.path.rsplit("/", 1)[-1]
                    for info in mlflow.artifacts.list_artifacts(
                        run_id=run.run_id, artifact_path=epoch_dir.path
                    )
                }
                assert "train_confusion_matrix.json" not in names, epoch_dir.path


def ours_logged(run: RunView) -> bool:
    return any(key.startswith("mcmetrics.") for key in run.params)


def check_mlflow_unchanged(name: str, runs: list[RunView], experiment_id: str, tmp_path) -> None:
    """MLflow's own logging with ours added equals the ``mlflow.autolog()``-alone runs: our
    keys (the ours-alone runs' keys) and ``mcmetrics.*`` params added, nothing else changed."""
    pattern = PATTERNS[name]
    baseline = runs_of(name, "mlflow", experiment_id, tmp_path)
    ours = runs_of(name, "ours", experiment_id, tmp_path)
    assert len(runs) == len(baseline)
    for index, (run, alone) in enumerate(zip(runs, baseline, strict=True)):
        ours_keys = ours[index].keys if index < len(ours) else set()
        # Set by MLflow's own logging functions that ours goes through: mlflow.log_image (the
        # per-epoch figures) and the table registry of mlflow.log_table (per-class tables).
        tags = {k: v for k, v in run.tags.items() if k != "mlflow.loggedImages"}
        tables = json.loads(tags.pop("mlflow.loggedArtifacts", "[]"))
        mlflows_tables = json.loads(alone.tags.get("mlflow.loggedArtifacts", "[]"))
        assert tags == {k: v for k, v in alone.tags.items() if k != "mlflow.loggedArtifacts"}
        ours_tables = [table for table in tables if table not in mlflows_tables]
        assert all(table["path"].startswith("mcmetrics/") for table in ours_tables), tables
        assert len(tables) == len(mlflows_tables) + len(ours_tables)
        mlflows = {k: v for k, v in run.params.items() if not k.startswith("mcmetrics.")}
        assert mlflows == alone.params
        # MLflow logs validation_<key> for every key of Keras' validation logs (see
        # check_no_key_twice_at_one_step), ours among them: f1_macro, <output>_f1_macro.
        mlflows_copies = {
            f"validation_{key}"
            for key in ours_keys
            if re.fullmatch(r"(\w+_)?f1_macro", key) and f"val_{key}" in ours_keys
        }
        expected = alone.keys | ours_keys | mlflows_copies | set(pattern.mlflow_differences)
        assert run.keys == expected, (
            f"not MLflow's: {sorted(run.keys - expected)}, missing: {sorted(expected - run.keys)}"
        )
        # Ours: mcmetrics/, and images/ of mlflow.log_image (the per-epoch figures).
        assert run.artifacts - {"mcmetrics", "images"} == alone.artifacts
        assert (run.model_files is None) == (alone.model_files is None)
        assert run.model_files == alone.model_files
        assert run.mlmodel == alone.mlmodel  # flavors, signature, versions


@pytest.mark.parametrize(("name", "mode"), CASES)
def test_pattern(name, mode, tracking, tmp_path):
    _, experiment_id = tracking
    pattern = PATTERNS[name]
    outcome = run_pattern(name, mode, experiment_id, tmp_path)
    _RUNS.setdefault(name, {})[mode] = outcome.runs
    for run in outcome.runs:
        check_no_key_twice_at_one_step(run, "mlflow" in MODES[mode])

    if "ours" not in MODES[mode]:
        assert not outcome.ours_warnings
        assert len(outcome.runs) == len(outcome.fits)
        return
    detected = pattern.detected
    if detected is None:
        detected = any(ours_logged(run) for run in outcome.runs)
    if pattern.restores:
        for fit in outcome.fits:
            assert fit.restored_epoch is not None and fit.restored_epoch < fit.epochs[-1]
    if detected:
        assert len(outcome.runs) == len(outcome.fits)
        for run, fit in zip(outcome.runs, outcome.fits, strict=True):
            check_ours_on_fit(run, fit, pattern)
    else:
        # Told once, visibly, and nothing of ours logged (no run of ours either).
        assert not [run for run in outcome.runs if ours_logged(run)]
        if mode == "ours":
            assert outcome.runs == []
    if detected and pattern.detected is None or pattern.warning is None:
        assert not outcome.ours_warnings, outcome.ours_warnings
    else:
        assert len(outcome.ours_warnings) == 1, outcome.ours_warnings
        assert re.search(pattern.warning, outcome.ours_warnings[0]), outcome.ours_warnings
        # Issue 27, item 4: never the diagnosis of an empty split for a metric not fed.
        assert "not empty" not in outcome.ours_warnings[0]
    if "mlflow" in MODES[mode]:
        check_mlflow_unchanged(name, outcome.runs, experiment_id, tmp_path)
