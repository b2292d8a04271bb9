"""Every code block of the documentation site (docs/*.md) runs, as the README's do.

The pages' fenced blocks follow these conventions (language, then attributes, as MkDocs'
superfences reads them; the attributes do not show on the site):

* ```` ```python ````: run. A page's consecutive Python blocks run in one subprocess, in page
  order, so a page reads like a notebook; any other runnable block between them starts a new
  subprocess.
* ```` ```python title="NAME.py" ````: written to ``NAME.py`` in the page's folder (a later
  block runs it), as the reader is asked to save it.
* ```` ```bash ````: run with ``bash -euo pipefail`` in the page's folder.
* ```` ```bash { data-test="serve" } ````: a command that serves until stopped (``mlflow ui``):
  started on a free port (``MLFLOW_PORT``), asked for the page's runs, and stopped.
* ```` ```bash { data-test="skip: REASON" } ````: not run; the reason says why and where the
  tests run it instead. :data:`MAX_SKIPPED` caps how many there are.
* ```` ```json ````: a layout shown as an example; it must parse.

Each page runs in a folder of its own against the test tracking server, in an experiment of
its own, except getting-started.md, which runs as a newcomer would: no tracking URI, MLflow's
default ``./mlflow.db`` in that folder, and ``mlflow ui`` started there.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pytest
from conftest import REPO_ROOT

DOCS = REPO_ROOT / "docs"
PAGES = sorted(path.relative_to(DOCS).as_posix() for path in DOCS.rglob("*.md"))
#: Pages that run as a newcomer's first session: MLflow's default local store, no server.
LOCAL_STORE_PAGES = {"getting-started.md"}
#: Blocks not run, over the whole site (each names its reason and where it is tested).
MAX_SKIPPED = 8
#: The runs each page's code makes (every fit, the evaluator's run, the run `mcmetrics sync`
#: creates after the outage): all of them must end FINISHED.
RUNS = {
    "autolog.md": 6,
    "distributed.md": 2,
    "exactness.md": 0,
    "getting-started.md": 1,
    "imbalance.md": 2,
    "index.md": 0,
    "reading-results.md": 3,
    "run-contents.md": 1,
    "troubleshooting.md": 1,
}
RUNNABLE = ("python", "bash")
_FENCE = re.compile(r"^```(\S*)[ \t]*(.*)$")
_ATTRIBUTE = re.compile(r'([\w-]+)="([^"]*)"')
_INCLUDE = re.compile(r'^--8<-- "([^"]+)"\s*$', re.M)


@dataclass
class Block:
    page: str
    line: int
    language: str
    attributes: dict[str, str]
    code: str

    @property
    def test(self) -> str:
        return self.attributes.get("data-test", "")

    @property
    def where(self) -> str:
        return f"docs/{self.page}:{self.line}"


def page_text(page: str) -> str:
    """The page as MkDocs reads it, with its snippet includes (CHANGELOG.md & co.) in place."""
    text = (DOCS / page).read_text()
    return _INCLUDE.sub(lambda match: (REPO_ROOT / match.group(1)).read_text(), text)


def blocks(page: str) -> list[Block]:
    found, current, lines = [], None, page_text(page).splitlines()
    for number, line in enumerate(lines, 1):
        fence = _FENCE.match(line)
        if current is None and fence:
            language, info = fence.groups()
            current = Block(page, number, language, dict(_ATTRIBUTE.findall(info)), "")
        elif current is not None and line.strip() == "```":
            found.append(current)
            current = None
        elif current is not None:
            current.code += line + "\n"
    assert current is None, f"docs/{page}: a code block is not closed"
    return found


ALL_BLOCKS = [block for page in PAGES for block in blocks(page)]


def test_every_block_is_run_checked_or_skipped_with_a_reason():
    for block in ALL_BLOCKS:
        assert block.language in (*RUNNABLE, "json"), f"{block.where}: {block.language!r}"
        assert block.test in ("", "serve") or block.test.startswith("skip: "), block.where
        if block.test.startswith("skip: "):
            assert len(block.test.split()) >= 6, f"{block.where}: say why it is not run"
        if block.language == "json":
            json.loads(block.code)  # a layout shown as an example is valid JSON
    skipped = [block.where for block in ALL_BLOCKS if block.test.startswith("skip: ")]
    assert len(skipped) <= MAX_SKIPPED, skipped
    assert sum(block.language in RUNNABLE for block in ALL_BLOCKS) >= 20


def test_getting_started_saves_the_readme_quick_start():
    """The newcomer's path starts from the README's quick start, as the page says."""
    readme = (REPO_ROOT / "README.md").read_text()
    quick_start = re.search(r"```python\n(.*?)```", readme, flags=re.S).group(1)
    saved = [b for b in blocks("getting-started.md") if b.attributes.get("title") == "train.py"]
    assert [block.code for block in saved] == [quick_start]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run(command: list[str], folder: Path, env: dict, where: str) -> str:
    result = subprocess.run(
        command, cwd=folder, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, f"{where}\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    return result.stdout


def _serve(block: Block, folder: Path, env: dict, experiment_ids: list[str]) -> None:
    """Start the block's server on a free port, find the page's runs through it, stop it."""
    port = _free_port()
    log = open(folder / f"serve-{block.line}.log", "w")
    server = subprocess.Popen(
        ["bash", "-euo", "pipefail", "-c", block.code],
        cwd=folder,
        env={**env, "MLFLOW_PORT": str(port)},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its workers too are stopped with it, below
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert server.poll() is None, (folder / f"serve-{block.line}.log").read_text()
            assert time.monotonic() < deadline, f"{block.where}: no answer on {uri}"
            time.sleep(0.5)
        runs = mlflow.MlflowClient(uri).search_runs(experiment_ids)
        assert runs, f"{block.where}: the server shows no run"
        assert all("val_f1_macro" in run.data.metrics for run in runs)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
        log.close()


def run_page(page: str, folder: Path, env: dict, experiment_ids: list[str]) -> None:
    """Run the page's blocks in order in ``folder`` (see the module docstring)."""
    python: list[Block] = []

    def flush():
        if python:
            script = folder / f"page-{python[0].line}.py"
            script.write_text("\n".join(block.code for block in python))
            _run([sys.executable, script.name], folder, env, python[0].where)
            python.clear()

    for block in blocks(page):
        if block.language not in RUNNABLE or block.test.startswith("skip: "):
            continue
        if block.language == "python" and "title" in block.attributes:
            (folder / block.attributes["title"]).write_text(block.code)
        elif block.language == "python":
            python.append(block)
        elif block.test == "serve":
            flush()
            _serve(block, folder, env, experiment_ids)
        else:
            flush()
            _run(["bash", "-euo", "pipefail", "-c", block.code], folder, env, block.where)
    flush()


RUN_PAGES = [
    page
    for page in PAGES
    if any(b.language in RUNNABLE and not b.test.startswith("skip: ") for b in blocks(page))
]


@pytest.mark.slow
@pytest.mark.parametrize("page", RUN_PAGES)
def test_page_runs(page, tracking, tmp_path):
    client, experiment_id = tracking
    env = dict(os.environ)
    # The venv's `mlflow` and `mcmetrics` commands, as after `. .venv/bin/activate`.
    env["PATH"] = f"{os.path.dirname(sys.executable)}{os.pathsep}{env['PATH']}"
    started_ms = int(time.time() * 1000)
    if page in LOCAL_STORE_PAGES:
        env.pop("MLFLOW_TRACKING_URI", None)
        env.pop("MLFLOW_EXPERIMENT_ID", None)
        run_page(page, tmp_path, env, ["0"])
        client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
        experiment_ids = ["0"]
    else:
        env["MLFLOW_TRACKING_URI"] = mlflow.get_tracking_uri()
        env["MLFLOW_EXPERIMENT_ID"] = experiment_id
        run_page(page, tmp_path, env, [experiment_id])
        # The page's experiment, and those its code created (mlflow.set_experiment).
        experiment_ids = [experiment_id] + [
            e.experiment_id for e in client.search_experiments() if e.creation_time >= started_ms
        ]
    # Whatever the page's code logged arrived and ended well, and nothing is left undelivered.
    runs = client.search_runs(experiment_ids)
    assert len(runs) == RUNS[page], [run.info.run_name for run in runs]
    for run in runs:
        assert run.info.status == "FINISHED", (page, run.info.run_name, run.info.status)
    journals = list((tmp_path / "mcmetrics-spool").glob("*/records.jsonl"))
    assert not journals, f"{page} left undelivered journals: {journals}"
