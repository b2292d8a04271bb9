"""Class names -> metric-key components: always valid for MLflow, unique and stable."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from mlflow.utils.validation import _validate_metric_name

from mlflow_mcmetrics.naming import MAX_KEY_LENGTH, class_key_components, metric_key

HOSTILE = [
    "cat",
    "cat",
    "",
    ".",
    "..",
    "a/b",
    "/",
    "x" * 1000,
    "chat noir",
    "猫",
    "a\nb",
    "a=b,#",
    "a_1",
]


def assert_valid_keys(components):
    for component in components:
        for prefix in ("", "val_"):
            for metric in ("precision", "recall", "f1", "ap"):
                key = metric_key(prefix, metric, component)
                _validate_metric_name(key)  # MLflow's own check: raises on a bad key
                assert len(key) <= MAX_KEY_LENGTH


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(max_size=300), max_size=30))
def test_components_are_valid_unique_and_stable(names):
    components = class_key_components(names)
    assert len(components) == len(names)
    assert len(set(components)) == len(components)
    assert class_key_components(names) == components
    assert_valid_keys(components)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["a", "a_1", "a_2", "a_2_1", "", "_", "."]), max_size=12))
def test_collision_suffixes_never_collide(names):
    components = class_key_components(names)
    assert len(set(components)) == len(components)


def test_hostile_names():
    components = class_key_components(HOSTILE)
    assert components[:2] == ["cat", "cat_1"]
    assert components[9] == "猫"  # unicode letters are valid MLflow key characters
    assert components[5] == "a_b" and components[10] == "a_b_10"
    assert len(set(components)) == len(HOSTILE)
    assert_valid_keys(components)


def test_plain_names_are_kept():
    names = ["airplane", "automobile", "T-shirt/top", "class 3", "v1.2"]
    assert class_key_components(names) == [
        "airplane",
        "automobile",
        "T-shirt_top",
        "class 3",
        "v1.2",
    ]
