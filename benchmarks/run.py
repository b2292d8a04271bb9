"""Run every benchmark and print its table (each script in its own process).

    python benchmarks/run.py [--quick]

Each script times its own baselines in the same process, so every ratio it prints is taken
under the same load; see benchmarks/README.md for the latest figures and what they mean.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = {
    "update_cost.py": "Metric update cost per batch",
    "fit_overhead.py": "Epoch time of a real fit",
    "logging_cost.py": "Per-epoch logging cost",
    "memory.py": "State size and memory while streaming",
    "mlproject_fit.py": "The MLproject's default fit, whole",
    "many_classes.py": "One epoch with 2000 classes",
}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--quick", action="store_true", help="fewer repetitions where a script supports it"
    )
    args = parser.parse_args()
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    status = 0
    for script, title in SCRIPTS.items():
        print(f"\n## {title} ({script})\n", flush=True)
        extra = ["--quick"] if args.quick and script == "update_cost.py" else []
        extra += (
            ["--epochs", "5", "--rounds", "1"] if args.quick and script == "fit_overhead.py" else []
        )
        extra += (
            ["--rounds", "1"]
            if args.quick and script in ("mlproject_fit.py", "many_classes.py")
            else []
        )
        result = subprocess.run(
            [sys.executable, str(HERE / script), *extra], env=env, capture_output=True, text=True
        )
        print("\n".join(line for line in result.stdout.splitlines() if line.strip()), flush=True)
        if result.returncode:
            print(result.stderr[-2000:], file=sys.stderr)
            status = result.returncode
    return status


if __name__ == "__main__":
    sys.exit(main())
