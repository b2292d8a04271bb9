"""autolog() next to Keras and MLflow with their defaults: it changes nothing but what it adds.

Each test reproduces one way the package used to break its surroundings (issue 14): MLflow's
model logging, load_model, saved models without the package, regression models, models built
at their first fit, mode="auto" monitors, MLflow's autologging test mode, multi-output models.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import warnings

import keras
import mlflow
import numpy as np
import pytest
from sklearn import metrics as skm
from test_readme import subprocess_env
from test_training import assert_logged, dense_model, expected_scores, run_id_of_last_fit

import mlflow_mcmetrics

pytestmark = pytest.mark.slow

#: Run in a child process in which `import mlflow_mcmetrics` fails, like a serving image.
WITHOUT_PACKAGE = "import sys; sys.modules['mlflow_mcmetrics'] = None\n"


def run_without_package(code: str, tmp_path) -> str:
    script = tmp_path / "child.py"
    script.write_text(WITHOUT_PACKAGE + textwrap.dedent(code))
    done = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        env=subprocess_env(mlflow.get_tracking_uri()),
        cwd=tmp_path,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def compiled_model(hidden=16, **compile_arguments):
    model = dense_model(64, 10, "softmax", hidden=hidden)
    model.compile(
        optimizer="adam",
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
        **compile_arguments,
    )
    return model


@pytest.fixture
def keras_registry_without_ours(monkeypatch):
    """Keras' global registry as in a process that only called autolog(): other tests of this
    session used ClassificationMetrics and the losses explicitly, which registers them."""
    from keras.src.saving import object_registration

    for name, registered in list(object_registration.GLOBAL_CUSTOM_OBJECTS.items()):
        if getattr(registered, "__module__", "").startswith("mlflow_mcmetrics"):
            monkeypatch.delitem(object_registration.GLOBAL_CUSTOM_OBJECTS, name)


def logged_model_of(run_id: str):
    """The model MLflow logged from ``run_id``, and its linked metrics by (key, step)."""
    (logged,) = mlflow.search_logged_models(
        filter_string=f"source_run_id = '{run_id}'", output_format="list"
    )
    return logged, {(metric.key, metric.step): metric.value for metric in logged.metrics}


@pytest.mark.parametrize("order", ["keras-first", "mcmetrics-first", "mlflow.autolog"])
def test_mlflow_logs_a_loadable_model_that_carries_our_metrics(
    tracking, digits, order, tmp_path, keras_registry_without_ours
):
    """Item 1 and 8: MLflow's default log_models=True, in either order; mlflow.tensorflow
    pickles Keras' registry into the model, so autolog() alone must register nothing."""
    client, _ = tracking
    x, y, xv, yv = digits
    enable_mlflow = mlflow.autolog if order == "mlflow.autolog" else mlflow.keras.autolog
    if order == "mcmetrics-first":
        mlflow_mcmetrics.autolog()
        enable_mlflow()
    else:
        enable_mlflow()
        mlflow_mcmetrics.autolog()
    model = compiled_model()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(x, y, validation_data=(xv, yv), epochs=3, batch_size=128, verbose=0)
    assert not [w for w in caught if "autologging" in str(w.message)], [
        str(w.message) for w in caught
    ]
    mlflow_mcmetrics.flush()  # epoch 0 is sent once MLflow has logged its model
    run_id = run_id_of_last_fit()
    # MLflow's integration still logs (its fit() params, loss), ours too, each key once per epoch.
    assert client.get_run(run_id).data.params["epochs"] == "3"
    for key in ("loss", "val_loss", "f1_macro", "val_f1_macro", "f1/3", "val_recall/9", "val_map"):
        assert [m.step for m in client.get_metric_history(run_id, key)] == [0, 1, 2], key
    predicted = model.predict(xv, verbose=0).argmax(-1)
    assert_logged(client, run_id, expected_scores(yv, predicted, list(range(10)), "val_"), 3)

    logged, linked = logged_model_of(run_id)
    assert logged.status == "READY"
    # Ours are linked for the last epoch only: the values the model ends with.
    run_metrics = client.get_run(run_id).data.metrics
    for key in ("val_f1/3", "val_recall/9", "val_map", "f1/0"):
        assert linked[(key, 2)] == pytest.approx(run_metrics[key]), key
        assert [step for linked_key, step in linked if linked_key == key] == [2], key
    output = run_without_package(
        f"""
        import mlflow, numpy as np
        mlflow.set_tracking_uri({mlflow.get_tracking_uri()!r})
        model = mlflow.pyfunc.load_model("models:/{logged.model_id}")
        print(model.predict(np.zeros((3, 64), dtype="float32")).shape)
        """,
        tmp_path,
    )
    assert "(3, 10)" in output


def test_an_early_stopped_models_metrics_are_its_last_epochs(tracking, digits):
    """The epoch a callback stops training at (EarlyStopping & co.) is the one linked."""
    client, _ = tracking
    x, y, xv, yv = digits
    mlflow.keras.autolog()
    mlflow_mcmetrics.autolog()
    stop_at_epoch_1 = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: setattr(model, "stop_training", epoch == 1)
    )
    model = compiled_model()
    model.fit(
        x,
        y,
        validation_data=(xv, yv),
        epochs=5,
        batch_size=128,
        verbose=0,
        callbacks=[stop_at_epoch_1],
    )
    mlflow_mcmetrics.flush()
    run_id = run_id_of_last_fit()
    _, linked = logged_model_of(run_id)
    assert [step for key, step in linked if key == "val_f1/3"] == [1]
    assert linked[("val_f1/3", 1)] == pytest.approx(client.get_run(run_id).data.metrics["val_f1/3"])
    mlflow.keras.autolog(disable=True)


def test_early_stopping_that_restores_weights_gets_the_restored_epochs_artifacts(tracking, digits):
    """Issue 27 item 6: EarlyStopping(restore_best_weights=True) ends with the best epoch's
    weights; the report, the model links and the values after the last epoch describe them."""
    client, _ = tracking
    x, y, xv, yv = digits
    mlflow.tensorflow.autolog()
    mlflow_mcmetrics.autolog()
    model = compiled_model()

    def spoil_from_epoch_2(epoch, logs):
        if epoch >= 2:  # zero weights, no learning: validation F1 drops, training stops
            model.set_weights([np.zeros_like(w) for w in model.get_weights()])
            model.optimizer.learning_rate.assign(0.0)

    stopping = keras.callbacks.EarlyStopping(
        monitor="val_f1_macro", patience=1, restore_best_weights=True
    )
    model.fit(
        x,
        y,
        validation_data=(xv, yv),
        epochs=6,
        batch_size=64,
        verbose=0,
        callbacks=[keras.callbacks.LambdaCallback(on_epoch_begin=spoil_from_epoch_2), stopping],
    )
    mlflow_mcmetrics.flush()
    assert (stopping.stopped_epoch, stopping.best_epoch) == (2, 1)
    run_id = run_id_of_last_fit()
    predicted = model.predict(xv, verbose=0).argmax(-1)  # the restored weights
    report = mlflow.artifacts.load_dict(f"runs:/{run_id}/mcmetrics/classification_report.json")
    assert report["epoch"] == 1
    assert report["averages"]["macro"]["f1"] == pytest.approx(
        skm.f1_score(yv, predicted, average="macro"), abs=1e-9
    )
    history = client.get_metric_history(run_id, "val_f1_macro")
    by_step = {m.step: m.value for m in history}
    assert sorted(by_step) == [0, 1, 2, 3] and by_step[3] == pytest.approx(by_step[1])
    ours = {m.step: m.value for m in client.get_metric_history(run_id, "val_precision_macro")}
    assert sorted(ours) == [0, 1, 2, 3] and ours[3] == ours[1] != ours[2]
    _, linked = logged_model_of(run_id)
    assert [step for key, step in linked if key == "val_precision_macro"] == [3]
    mlflow.tensorflow.autolog(disable=True)


def test_load_model_compiles_as_without_autolog(tracking, digits, tmp_path):
    """Item 2: Keras skips compile() in load_model when Model.compile is patched."""
    x, y, xv, yv = digits
    model = compiled_model()
    model.fit(x, y, epochs=1, verbose=0)
    model.save(tmp_path / "before.keras")
    mlflow_mcmetrics.autolog()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = keras.models.load_model(tmp_path / "before.keras")
    assert not [w for w in caught if "compile()" in str(w.message)]
    assert loaded.compiled and loaded.loss == "sparse_categorical_crossentropy"
    assert loaded.evaluate(xv, yv, verbose=0)[1] == pytest.approx(
        model.evaluate(xv, yv, verbose=0)[1]
    )
    # fit() on the loaded model gets the metric, and evaluate() afterwards is unchanged.
    history = loaded.fit(x, y, validation_data=(xv, yv), epochs=1, verbose=0)
    assert "val_f1_macro" in history.history
    assert len(loaded.evaluate(xv, yv, verbose=0)) == 2


def test_a_model_trained_under_autolog_loads_where_the_package_is_not(tracking, digits, tmp_path):
    """Item 3: the .keras file, a mid-fit checkpoint, and evaluate() are the user's."""
    x, y, xv, yv = digits
    mlflow_mcmetrics.autolog()
    model = compiled_model()
    checkpoint = keras.callbacks.ModelCheckpoint(
        tmp_path / "best.keras", monitor="val_f1_macro", save_best_only=True
    )
    model.fit(
        x, y, validation_data=(xv, yv), epochs=2, batch_size=128, verbose=0, callbacks=[checkpoint]
    )
    assert [m.name for m in model.metrics] == ["loss", "compile_metrics"]  # nothing of ours left
    assert model.get_compile_config()["metrics"] == ["accuracy"]
    model.save(tmp_path / "final.keras")
    np.save(tmp_path / "xv.npy", xv)
    np.save(tmp_path / "yv.npy", yv)
    output = run_without_package(
        """
        import keras, numpy as np
        xv, yv = np.load("xv.npy"), np.load("yv.npy")
        for name in ("best.keras", "final.keras"):
            model = keras.models.load_model(name)
            print(name, model.compiled, model.evaluate(xv, yv, verbose=0, return_dict=True))
        """,
        tmp_path,
    )
    assert output.count("True {'accuracy'") == 2, output


def test_an_explicit_metric_loads_after_importing_it_without_custom_objects(tmp_path, digits):
    """Item 3: importing the metric (before keras) registers it for load_model; autolog alone
    registers nothing (mlflow.tensorflow pickles Keras' registry into the models it logs)."""
    x, y, _, _ = digits
    model = dense_model(64, 10, "softmax")
    model.compile(
        optimizer="adam",
        loss="sparse_categorical_crossentropy",
        metrics=[mlflow_mcmetrics.ClassificationMetrics(10, pr_thresholds=0)],
    )
    model.fit(x, y, epochs=1, verbose=0)
    model.save(tmp_path / "explicit.keras")
    script = tmp_path / "load.py"
    script.write_text(
        "from mlflow_mcmetrics import ClassificationMetrics\nimport keras\n"
        "model = keras.models.load_model('explicit.keras')\n"
        "print(type(model.get_compile_config()['metrics'][0]))\n"
    )
    done = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        env=subprocess_env(mlflow.get_tracking_uri()),
        cwd=tmp_path,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.parametrize("loss", ["mse", "mae"])
def test_a_regression_model_gets_nothing(tracking, digits, loss, caplog):
    """Item 4: no keys, no run of ours, at most one info line."""
    client, experiment_id = tracking
    x, y, xv, yv = digits
    mlflow_mcmetrics.autolog()
    model = dense_model(64, 1, None)
    model.compile(optimizer="adam", loss=loss)
    with (
        warnings.catch_warnings(record=True) as caught,
        caplog.at_level("INFO", logger="mlflow_mcmetrics"),
    ):
        warnings.simplefilter("always")
        history = model.fit(
            x, y.astype("float32"), validation_data=(xv, yv.astype("float32")), epochs=2, verbose=0
        )
    assert sorted(history.history) == ["loss", "val_loss"]
    assert not [w for w in caught if "mlflow_mcmetrics" in str(w.message)]
    assert len([r for r in caplog.records if r.name == "mlflow_mcmetrics"]) <= 1
    assert client.search_runs([experiment_id]) == []


def test_a_model_built_at_its_first_fit_gets_the_metric_on_that_fit(tracking, digits):
    """Item 5: a Sequential without keras.Input, the tutorial style."""
    client, _ = tracking
    x, y, xv, yv = digits
    mlflow_mcmetrics.autolog()
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.layers.Dense(16, activation="relu"), keras.layers.Dense(10, activation="softmax")]
    )
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(x, y, validation_data=(xv, yv), epochs=2, batch_size=128, verbose=0)
    assert not [str(w.message) for w in caught if "mlflow_mcmetrics" in str(w.message)]
    predicted = model.predict(xv, verbose=0).argmax(-1)
    assert_logged(
        client, run_id_of_last_fit(), expected_scores(yv, predicted, list(range(10)), "val_"), 2
    )


def test_monitors_on_val_f1_macro_work_with_mode_auto(tracking, digits, tmp_path):
    """Item 6: the metric declares its direction, as Keras' own metrics do."""
    x, y, xv, yv = digits
    mlflow_mcmetrics.autolog()
    model = compiled_model()
    monitors = [
        keras.callbacks.EarlyStopping(monitor="val_f1_macro", patience=5),
        keras.callbacks.ModelCheckpoint(
            tmp_path / "best.keras", monitor="val_f1_macro", save_best_only=True
        ),
        keras.callbacks.ReduceLROnPlateau(monitor="val_f1_macro", patience=5),
    ]
    history = model.fit(
        x, y, validation_data=(xv, yv), epochs=3, batch_size=128, verbose=0, callbacks=monitors
    )
    for monitor in monitors:
        assert monitor.monitor_op is keras.ops.greater, type(monitor).__name__
    assert monitors[0].best == pytest.approx(max(history.history["val_f1_macro"]))


@pytest.mark.parametrize("integration", ["keras", "tensorflow"])
def test_mlflow_autologging_test_mode(tracking, digits, monkeypatch, integration):
    """Item 7: under MLFLOW_AUTOLOGGING_TESTING, MLflow validates what patches pass on."""
    client, _ = tracking
    monkeypatch.setenv("MLFLOW_AUTOLOGGING_TESTING", "true")
    x, y, xv, yv = digits
    getattr(mlflow, integration).autolog()
    mlflow_mcmetrics.autolog()
    model = compiled_model()
    model.fit(x, y, validation_data=(xv, yv), epochs=2, batch_size=128, verbose=0)
    mlflow_mcmetrics.flush()
    predicted = model.predict(xv, verbose=0).argmax(-1)
    assert_logged(
        client, run_id_of_last_fit(), expected_scores(yv, predicted, list(range(10)), "val_"), 2
    )
    getattr(mlflow, integration).autolog(disable=True)


def test_multi_output_model_logs_each_classification_output(tracking, digits):
    """Keys prefixed as Keras prefixes its logs; the regression head gets nothing."""
    client, _ = tracking
    x, y, xv, yv = digits
    inputs = keras.Input((64,))
    hidden = keras.layers.Dense(16, activation="relu")(inputs)
    digit = keras.layers.Dense(10, activation="softmax", name="digit")(hidden)
    parity = keras.layers.Dense(1, activation="sigmoid", name="parity")(hidden)
    size = keras.layers.Dense(1, name="size")(hidden)
    keras.utils.set_random_seed(0)
    model = keras.Model(inputs, {"digit": digit, "parity": parity, "size": size})
    model.compile(
        optimizer="adam",
        loss={
            "digit": "sparse_categorical_crossentropy",
            "parity": "binary_crossentropy",
            "size": "mse",
        },
    )
    targets = {"digit": y, "parity": (y % 2).astype("float32"), "size": y.astype("float32")}
    val_targets = {"digit": yv, "parity": (yv % 2).astype("float32"), "size": yv.astype("float32")}
    mlflow_mcmetrics.autolog(class_names={"parity": ["even", "odd"]})
    history = model.fit(
        x, targets, validation_data=(xv, val_targets), epochs=2, batch_size=128, verbose=0
    )
    assert {"val_digit_f1_macro", "val_parity_f1_macro"} <= set(history.history)

    run_id = run_id_of_last_fit()
    predictions = model.predict(xv, verbose=0)
    expected = expected_scores(yv, predictions["digit"].argmax(-1), list(range(10)), "val_digit_")
    parity = expected_scores(
        yv % 2, (predictions["parity"][:, 0] > 0.5).astype(int), [0, 1], "val_parity_"
    )
    expected.update({k.replace("/0", "/even").replace("/1", "/odd"): v for k, v in parity.items()})
    logged = client.get_run(run_id).data
    for key, value in expected.items():
        assert logged.metrics[key] == pytest.approx(value, abs=1e-6), key
    for key in ("val_digit_f1_macro", "val_parity_f1/odd", "digit_f1/3"):
        assert [m.step for m in client.get_metric_history(run_id, key)] == [0, 1], key
    assert not [key for key in logged.metrics if key.startswith(("size_", "val_size_"))]
    assert logged.params["mcmetrics.parity.task"] == "binary"
    matrix = mlflow.artifacts.load_dict(
        f"runs:/{run_id}/mcmetrics/digit/epochs/0001/val_confusion_matrix.json"
    )
    np.testing.assert_array_equal(
        matrix["matrix"], skm.confusion_matrix(yv, predictions["digit"].argmax(-1))
    )


def test_backup_and_restore_resumes_with_step_equal_to_epoch(tracking, digits, tmp_path):
    client, _ = tracking
    x, y, xv, yv = digits

    class StopAt(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise RuntimeError("preempted")

    mlflow_mcmetrics.autolog()
    model = compiled_model()
    backup = keras.callbacks.BackupAndRestore(tmp_path / "backup")
    with pytest.raises(RuntimeError, match="preempted"):
        model.fit(x, y, validation_data=(xv, yv), epochs=4, verbose=0, callbacks=[backup, StopAt()])
    interrupted = mlflow.active_run().info.run_id
    resumed = compiled_model()
    history = resumed.fit(x, y, validation_data=(xv, yv), epochs=4, verbose=0, callbacks=[backup])
    run_id = run_id_of_last_fit()
    assert run_id != interrupted and client.get_run(interrupted).info.status == "KILLED"
    resumed_epochs = list(range(4 - len(history.history["loss"]), 4))
    assert resumed_epochs[0] > 0
    assert [m.step for m in client.get_metric_history(run_id, "val_f1/3")] == resumed_epochs


# --------------------------------------------------------------------------------------------
# Scenarios of MLflow's tests/tensorflow/test_tensorflow2_autolog.py, with our autolog() on
# --------------------------------------------------------------------------------------------


def batches(data, target, batch_size):
    yield from zip(
        np.split(data, len(data) // batch_size),
        np.split(target, len(target) // batch_size),
        strict=True,
    )


@pytest.fixture
def fresh_mlflow_autolog():
    """As MLflow's own test file does: mlflow.autolog() enabled again in the same process
    needs its import hooks and integration configs cleared first."""
    from mlflow.utils.autologging_utils import AUTOLOGGING_INTEGRATIONS

    for name in ("tensorflow", "keras"):
        mlflow.utils.import_hooks._post_import_hooks.pop(name, None)
        AUTOLOGGING_INTEGRATIONS.pop(name, None)


@pytest.mark.parametrize("batch_size", [2, 3])
def test_mlflow_generator_batch_size_and_last_active_run_are_mlflows(
    tracking, batch_size, fresh_mlflow_autolog
):
    """MLflow's
    test_tf_keras_autolog_implicit_batch_size_for_generator_dataset_without_side_effects:
    a regression model under mlflow.autolog() and ours; last_active_run() is MLflow's run."""
    data = np.array(
        [[1, 2, 3], [3, 2, 1], [2, 2, 2], [10, 20, 30], [30, 20, 10], [20, 20, 20]], dtype="float32"
    )
    target = np.array([[1], [3], [2], [11], [13], [12]], dtype="float32")
    model = keras.Sequential(
        [
            keras.Input((3,)),
            keras.layers.Dense(5, activation="relu", kernel_initializer="zeros"),
            keras.layers.Dense(1, kernel_initializer="zeros"),
        ]
    )
    model.compile(loss="mae", optimizer="adam", metrics=["mse"])
    mlflow.autolog()
    mlflow_mcmetrics.autolog()
    actual = model.fit(batches(data, target, batch_size), verbose=0).history
    assert sorted(actual) == ["loss", "mse"]
    assert mlflow.last_active_run().data.params["batch_size"] == str(batch_size)


@pytest.mark.parametrize("user_run", [False, True])
def test_mlflow_tensorflow_autolog_run_ownership_is_unchanged(tracking, digits, user_run):
    """MLflow's ..._ends_auto_created_run and ..._persists_manually_created_run."""
    x, y, xv, yv = digits
    mlflow.tensorflow.autolog()
    mlflow_mcmetrics.autolog()
    model = compiled_model()
    if user_run:
        with mlflow.start_run() as run:
            model.fit(x, y, epochs=2, verbose=0)
            assert mlflow.active_run().info.run_id == run.info.run_id
    else:
        model.fit(x, y, epochs=2, verbose=0)
        assert mlflow.active_run() is None
    run = mlflow.last_active_run()
    assert run.data.tags.get("mlflow.autologging") == (None if user_run else "tensorflow")
    assert "f1/3" in run.data.metrics and "accuracy" in run.data.metrics
    mlflow.tensorflow.autolog(disable=True)


#: keras.io's MNIST convnet opening: mlflow.autolog() (and ours) before `import tensorflow`.
IMPORT_ORDER_SCRIPT = """
import json, sys
import mlflow
mlflow.autolog()
if {with_ours}:
    import mlflow_mcmetrics
    mlflow_mcmetrics.autolog()
    assert "keras" not in sys.modules and "tensorflow" not in sys.modules
import numpy as np
import tensorflow as tf
from tensorflow import keras
keras.utils.set_random_seed(0)
x = np.random.default_rng(0).random((64, 8)).astype("float32")
y = np.arange(64) % 3
model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(3, activation="softmax")])
model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
model.fit(x, y, epochs=1, verbose=0)
run = mlflow.last_active_run()
print(json.dumps([run.data.tags.get("mlflow.autologging"), sorted(run.data.params)]))
"""


def test_autolog_before_importing_tensorflow_leaves_mlflows_integration_as_it_was(tracking):
    """Issue 27 item 2: autolog() imports neither Keras nor TensorFlow, so MLflow logs the run
    through mlflow.tensorflow, as without this package (tag and params unchanged)."""
    _, experiment_id = tracking
    env = subprocess_env(mlflow.get_tracking_uri())
    env["MLFLOW_EXPERIMENT_ID"] = experiment_id
    children = {
        with_ours: subprocess.Popen(
            [sys.executable, "-c", IMPORT_ORDER_SCRIPT.format(with_ours=with_ours)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for with_ours in (False, True)
    }
    printed = {}
    for with_ours, child in children.items():
        out, err = child.communicate(timeout=300)
        assert child.returncode == 0, err[-3000:]
        assert "Exception raised while enabling autologging" not in err
        printed[with_ours] = json.loads(out.strip().splitlines()[-1])
    tag, params = printed[True]
    assert tag == "tensorflow"
    assert [tag, [p for p in params if not p.startswith("mcmetrics.")]] == printed[False]
