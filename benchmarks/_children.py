"""Interleaved benchmark conditions, each in a fresh child process with its own SQLite store."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections.abc import Sequence


def run_interleaved(
    code: str, conditions: Sequence[str], rounds: int, *args: str
) -> dict[str, list[dict]]:
    """Run ``python -c code condition *args folder`` for every condition, ``rounds`` times,
    interleaved; each child prints one JSON object as its last line. Returns them by condition."""
    results: dict[str, list[dict]] = {condition: [] for condition in conditions}
    for _ in range(rounds):
        for condition in conditions:
            with tempfile.TemporaryDirectory() as folder:
                out = subprocess.run(
                    [sys.executable, "-c", code, condition, *args, folder],
                    capture_output=True,
                    text=True,
                    check=True,
                    cwd=folder,
                )
            results[condition].append(json.loads(out.stdout.strip().splitlines()[-1]))
    return results
