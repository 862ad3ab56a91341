"""Two ``transferlab worker`` processes drain one study on a real PostgreSQL server: each trial runs exactly once.

The server comes from ``scripts/services.sh`` (CI) at ``$TRANSFERLAB_TEST_POSTGRES`` or the default URL below.
If it is not reachable the test fails loudly; it never skips.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path

import optuna
import pytest
from conftest import TINY_BACKBONE, TINY_SIZE, make_class_folder

from transferlab.config import RunConfig
from transferlab.prepare import PreparedData, prepare
from transferlab.search.study import FINISHED, create_search_study, open_storage

DEFAULT_URL = "postgresql://transferlab@127.0.0.1:54329/transferlab_test"
TRIALS = 8


def _postgres_url() -> str:
    url = os.environ.get("TRANSFERLAB_TEST_POSTGRES", DEFAULT_URL)
    try:
        open_storage(url)
    except Exception as error:
        pytest.fail(f"PostgreSQL is required for this test ({url}): {error}. Start it with: bash scripts/services.sh")
    return url


@pytest.fixture
def prepared(tiny_weights: Path, tmp_path: Path) -> PreparedData:
    data = make_class_folder(tmp_path / "data", per_class=20)
    config = RunConfig(str(data), TINY_BACKBONE, str(tiny_weights), image_size=TINY_SIZE, workers=0)
    return prepare(config, cache_dir=tmp_path / "cache", progress=False)


def test_two_workers_record_every_trial_exactly_once(prepared: PreparedData) -> None:
    url = _postgres_url()
    name = f"test-{uuid.uuid4().hex[:12]}"
    create_search_study(prepared, trials=TRIALS, storage=url, study_name=name, seed=0)

    command = [sys.executable, "-m", "transferlab.cli", "worker", "--study", name, "--storage", url]
    workers = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [worker.communicate(timeout=300) for worker in workers]
    for worker, (_, err) in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, err[-2000:]

    trials = optuna.load_study(study_name=name, storage=open_storage(url)).get_trials(deepcopy=False)
    assert len(trials) == TRIALS
    assert sorted(t.number for t in trials) == list(range(TRIALS))
    assert all(t.state in FINISHED for t in trials), Counter(t.state.name for t in trials)
    assert all("curve" in t.user_attrs and "seconds" in t.user_attrs for t in trials)
    ran = [int(out.split("ran ")[1].split(" trial")[0]) for out, _ in outputs]
    assert sum(ran) == TRIALS, ran


def test_forked_local_workers_share_a_postgres_study(
    prepared: PreparedData, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``--jobs 2`` forks a worker after the parent opened its PostgreSQL connections: neither may break the other's."""
    from transferlab.search import search_heads

    url = _postgres_url()
    name = f"test-{uuid.uuid4().hex[:12]}"
    caplog.set_level(logging.INFO, logger="transferlab")
    search_heads(prepared, tmp_path / "run", trials=TRIALS, storage=url, study_name=name, jobs=2)
    lines = [record.getMessage() for record in caplog.records]
    trials = optuna.load_study(study_name=name, storage=open_storage(url)).get_trials(deepcopy=False)
    assert sorted(t.number for t in trials) == list(range(TRIALS))
    assert all(t.state in FINISHED for t in trials), Counter(t.state.name for t in trials)
    assert any(line.startswith("[1] trial") for line in lines) and not any("exited with code" in line for line in lines)
