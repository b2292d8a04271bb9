"""Class names -> valid, unique MLflow metric-key components (pure Python)."""

from __future__ import annotations

import re
from collections.abc import Sequence

__all__ = ["LONGEST_KEY_PREFIX", "MAX_KEY_LENGTH", "class_key_components", "metric_key"]

#: MLflow's limit on metric key length.
MAX_KEY_LENGTH = 250
#: The longest ``{split}{metric}/`` prefix put before a class component.
LONGEST_KEY_PREFIX = "val_precision/"

# MLflow accepts keys matching ^[/\w.\- :]*$ (unicode letters included); "/" is ours, as the
# separator between the metric and the class.
_REJECTED = re.compile(r"[^\w.\- :]")


def _component(name: str, budget: int) -> str:
    component = _REJECTED.sub("_", str(name))[:budget]
    # "", "." and ".." would make the key resolve to another path, which MLflow rejects.
    return component if component.strip(".") else f"_{component}"[:budget]


def class_key_components(class_names: Sequence[str]) -> list[str]:
    """One key component per class name: valid for MLflow, unique, and stable.

    Characters MLflow rejects (and ``/``) become ``_``, names are cut so that
    ``val_precision/{component}`` fits in 250 characters, and a component that collides with an
    earlier one gets ``_{index}`` appended (``index`` = the class index; ``_{index}_{k}`` if
    that is taken too).

    >>> class_key_components(["cat", "dog/wolf", "cat", ".."])
    ['cat', 'dog_wolf', 'cat_2', '_..']
    """
    budget = MAX_KEY_LENGTH - len(LONGEST_KEY_PREFIX)
    components: list[str] = []
    taken: set[str] = set()
    for index, name in enumerate(class_names):
        base = component = _component(name, budget)
        attempt = 0
        while component in taken:
            suffix = f"_{index}" if attempt == 0 else f"_{index}_{attempt}"
            component = base[: budget - len(suffix)] + suffix
            attempt += 1
        taken.add(component)
        components.append(component)
    return components


def metric_key(prefix: str, metric: str, component: str | None = None) -> str:
    """``{prefix}{metric}`` or ``{prefix}{metric}/{component}``.

    >>> metric_key("val_", "f1", "cat"), metric_key("", "f1_macro")
    ('val_f1/cat', 'f1_macro')
    """
    return f"{prefix}{metric}" if component is None else f"{prefix}{metric}/{component}"
