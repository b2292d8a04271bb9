"""mlflow_mcmetrics.pages: what the interactive pages carry, and that they are self-contained.
(They are opened in a real browser in tests/test_ui.py.)"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from _inputs import softmax

from mlflow_mcmetrics import functional, pages, report


def page_data(page: str) -> dict:
    payload = re.search(
        r'<script type="application/json" id="mcmetrics-data">(.*?)</script>', page, re.S
    )
    return json.loads(payload.group(1))


def decoded_matrix(record: dict, shape: tuple[int, ...]) -> np.ndarray:
    matrix = np.zeros(int(np.prod(shape)))
    cells = record["matrix"]
    matrix[np.array(cells[0::2], dtype=int)] = cells[1::2]
    return matrix.reshape(shape)


def fitted_state(task="multiclass", num_classes=4, rows=300, seed=0):
    rng = np.random.default_rng(seed)
    if task == "multilabel":
        y_true = (rng.random((rows, num_classes)) < 0.3).astype(int)
        y_score = np.clip(y_true * 0.5 + rng.random((rows, num_classes)) * 0.6, 0, 1)
    else:
        y_true = rng.integers(0, num_classes, rows)
        logits = rng.normal(size=(rows, num_classes))
        logits[np.arange(rows), y_true] += 1.5
        y_score = softmax(logits)
        if task == "binary":
            y_true, y_score = (y_true == 1).astype(int), y_score[:, 1]
    state = functional.state_from_predictions(y_true, y_score, task=task, num_bins=64)
    return state, functional.classification_scores(state, task=task)


@pytest.mark.parametrize("task", ["multiclass", "binary", "multilabel"])
def test_an_epoch_record_holds_the_logged_numbers(task):
    state, scores = fitted_state(task)
    labels = list(range(state.num_classes))
    record = pages.epoch_record(3, "val", state, scores, labels, curves=True)
    np.testing.assert_array_equal(
        decoded_matrix(record, state.confusion_matrix.shape), state.confusion_matrix
    )
    for name in ("precision", "recall", "f1", "ap", "roc_auc"):
        np.testing.assert_allclose(record["scores"][name], scores[name], atol=5e-7, err_msg=name)
    for name, value in record["averages"].items():
        assert value == pytest.approx(scores[name], abs=5e-7), name
    assert ("ece" in record["averages"]) == (task != "multilabel")
    assert ("thresholds" in record) == (task != "multiclass")
    # Curves: the JSON artifact's points, thinned; each curve ends where the artifact's does.
    pr = report.pr_curves_payload(state, [str(c) for c in labels], labels, scores)["curves"]
    for label in labels:
        recall, precision = record["curves"]["pr"][label]
        assert len(recall) <= pages.MAX_CURVE_POINTS
        assert recall[0] == pytest.approx(pr[str(label)]["recall"][0], abs=5e-4)
        assert precision[-1] == pytest.approx(pr[str(label)]["precision"][-1], abs=5e-4)


def test_records_without_curves_are_small_and_the_last_one_gets_them():
    state, scores = fitted_state()
    labels = list(range(4))
    record = pages.epoch_record(0, "val", state, scores, labels, curves=False)
    assert "curves" not in record
    pages.add_curves(record, state, labels)
    assert set(record["curves"]) == {"pr", "roc", "reliability"}


def test_the_dashboard_is_one_self_contained_file_whose_data_round_trips():
    state, scores = fitted_state()
    names = ["cat", "</script><script>alert(1)</script>", "{{data}}", "ü / ø"]
    records = [
        pages.epoch_record(epoch, "val", state, scores, [0, 1, 2, 3], curves=epoch == 1)
        for epoch in range(2)
    ]
    data = pages.dashboard_data("run {{title}} <b>", names, [0, 1, 2, 3], "multiclass", records)
    page = pages.dashboard_html(data)
    assert page_data(page) == data  # hostile names stay data: the JSON cannot close its element
    assert page.count("<script") == 2 and "alert(1)</script>" not in page
    assert "<title>run {{title}} &lt;b&gt;</title>" in page
    # Nothing is fetched: no external script, style, image or request.
    assert not re.search(r'(src|href)\s*=\s*["\']?(https?:)?//', page)
    for call in ("fetch(", "XMLHttpRequest", "import(", "@import", "url("):
        assert call not in page
    assert "const Charts" in page and "dashboard.html" in page


def comparison_results():
    keys = ["head", "middle", "tail"]
    return keys, [
        (
            loss,
            {f"test_f1/{k}": value for k, value in zip(keys, values, strict=True)}
            | {"test_f1_macro": float(np.mean(values)), "test_mcc": 0.5},
        )
        for loss, values in [
            ("cce", [0.9, 0.6, 0.2]),
            ("cce", [0.8, 0.6, 0.4]),
            ("ldam", [0.9, 0.7, 0.5]),
        ]
    ]


def test_the_comparison_page_carries_the_table_and_run_ids():
    keys, results = comparison_results()
    groups = {"head": "many", "middle": "medium", "tail": "few"}
    table = report.comparison_table(results, keys, "test_", groups=groups)
    data = pages.comparison_data(
        table, {"cce": ["a", "b"], "ldam": ["c"]}, title="t", train_counts={"head": 100}
    )
    carried = page_data(pages.comparison_html(data))
    assert carried["rows"][0]["f1"]["tail"] == pytest.approx([0.3, 0.1])
    assert carried["rows"][0]["group_f1"]["few"] == pytest.approx([0.3, 0.1])
    assert carried["group_classes"] == {"many": ["head"], "medium": ["middle"], "few": ["tail"]}
    assert carried["scores"] == ["mcc"] and carried["run_ids"]["cce"] == ["a", "b"]
    assert carried["score_names"] == {"mcc": "MCC"}  # the page's column names come with it
    assert carried["group_names"]["few"] == "few-shot"


def test_comparison_group_f1_is_the_mean_over_runs_of_each_runs_group_mean():
    rng = np.random.default_rng(0)
    keys = [f"c{i}" for i in range(7)]
    groups = dict(zip(keys, ["many"] * 2 + ["medium"] * 3 + ["few"] * 2, strict=True))
    results = [
        (loss, {f"val_f1/{k}": float(rng.random()) for k in keys} | {"val_f1_macro": 0.5})
        for loss in ("cce", "focal", "cce", "focal", "cce")
    ]
    table = report.comparison_table(results, keys, "val_", groups=groups)
    for row in table["rows"]:
        runs = [metrics for loss, metrics in results if loss == row["group"]]
        for group in ("many", "medium", "few"):
            members = [k for k in keys if groups[k] == group]
            per_run = [np.mean([m[f"val_f1/{k}"] for k in members]) for m in runs]
            assert row["group_f1"][group] == pytest.approx([np.mean(per_run), np.std(per_run)])
    assert table["tail_classes"] == ["c5", "c6"]
    markdown = report.comparison_to_markdown(table)
    assert "| many-shot F1 (2) | medium-shot F1 (3) | few-shot F1 (2) |" in markdown
    header = report.comparison_to_csv(table).splitlines()[0].split(",")
    assert header[4:10] == [
        "f1_many",
        "f1_many_std",
        "f1_medium",
        "f1_medium_std",
        "f1_few",
        "f1_few_std",
    ]
    # Without training counts there are no groups, and no group columns.
    plain = report.comparison_table(results, keys, "val_")
    assert plain["group_classes"] == {} and plain["tail_classes"] == []
    assert "shot" not in report.comparison_to_markdown(plain)


def test_the_dashboard_groups_classes_by_the_first_epochs_training_support_or_as_told():
    state, scores = fitted_state(num_classes=6)
    labels = list(range(6))
    support = [[500, 150, 60, 30, 10, 3], [600, 600, 600, 600, 600, 600]]
    records = [
        pages.epoch_record(e, "val", state, scores, labels, curves=False, train_support=s)
        for e, s in enumerate(support)
    ]
    data = pages.dashboard_data("t", list("abcdef"), labels, "multiclass", records)
    expected = functional.shot_groups(support[0])  # the first epoch's: no resampled epoch
    assert data["groups"]["of_class"] == expected.groups.tolist()
    assert data["groups"]["counts"] == support[0]
    assert data["groups"]["rule"] == "thresholds" and data["groups"]["sizes"] == expected.sizes
    assert all("train_support" not in record for record in data["epochs"])
    told = functional.shot_groups([1, 2, 3, 4, 5, 6])  # class_counts= wins
    data = pages.dashboard_data("t", list("abcdef"), labels, "multiclass", records, groups=told)
    assert data["groups"]["rule"] == "thirds"
    assert data["groups"]["of_class"] == ["few", "few", "medium", "medium", "many", "many"]
    bare = [pages.epoch_record(0, "val", state, scores, labels, curves=False)]
    assert pages.dashboard_data("t", list("abcdef"), labels, "multiclass", bare)["groups"] is None


def test_an_epoch_record_carries_the_long_tail_scores_and_no_matrix_when_there_is_none():
    import dataclasses

    state, _ = fitted_state(num_classes=5)
    grouped = functional.shot_groups([300, 90, 40, 12, 3])
    scores = functional.classification_scores(state, groups=grouped.groups)
    record = pages.epoch_record(0, "val", state, scores, range(5), curves=False)
    for name in ("f1_many", "recall_few", "gmean", "f1_worst", "classes_recall_0"):
        assert record["averages"][name] == pytest.approx(scores[name], abs=5e-7), name
    counts_only = dataclasses.replace(state, confusion_matrix=None)
    record = pages.epoch_record(0, "val", counts_only, scores, range(5), curves=True)
    assert "matrix" not in record and "curves" in record
    with pytest.raises(ValueError, match="no confusion matrix"):
        report.confusion_matrix_payload(counts_only, list("abcde"), 0, "val")
