"""Killed and concurrent runs: finished feature shards survive a SIGKILL and are reused; two runs sharing one cache
both finish with the same metrics. Real child processes, real signals; nothing is mocked.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import make_class_folder
from corpus import tiny_backbone_args, transferlab_cli

from transferlab.features.cache import HASHES, STALE_TEMPORARY_SECONDS, FeatureCache

SHARD = 5
IMAGES = 120
SIZE = 32
# Small shards and batch size 1 make extraction slow enough to be caught in the middle. fp32 is forced because the
# bf16/fp32 choice is made on the first batch a process computes, which differs between the killed run and the re-run.
# One thread: the tiny network gains nothing from more, and it keeps runs comparable on a loaded machine.
SLOW_ENV = {**os.environ, "TRANSFERLAB_SHARD_SIZE": str(SHARD), "TRANSFERLAB_FP32": "1", "OMP_NUM_THREADS": "1"}


def _run_args(data: Path, weights: Path, cache: Path, runs: Path, name: str, *extra: str) -> list[str]:
    return ["run", str(data), *extra, *tiny_backbone_args(weights, cache, runs, name, image_size=SIZE)]


def _shards(cache: Path) -> list[Path]:
    return sorted(cache.glob("features/*/shard-*.npz"))


def _cached_hashes(cache: Path) -> set[str]:
    hashes: set[str] = set()
    for shard in _shards(cache):
        with np.load(shard, allow_pickle=False) as data:
            hashes.update(data[HASHES].astype(str))
    return hashes


def _metrics(runs: Path, name: str) -> dict:
    return json.loads((runs / name / "metrics.json").read_text())


def _counts(stdout: str) -> tuple[int, int]:
    """(computed, from cache) from the ``features: N computed, M from cache`` line."""
    line = next(line for line in stdout.splitlines() if line.startswith("features:"))
    words = line.replace(",", "").split()
    return int(words[1]), int(words[3])


@pytest.fixture(scope="module")
def many_images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_class_folder(tmp_path_factory.mktemp("kill") / "data", per_class=IMAGES // 3, size=16)


def test_sigkill_during_extraction_keeps_finished_shards_and_rerun_matches(
    many_images: Path, tiny_weights: Path, tmp_path: Path
) -> None:
    cache, runs = tmp_path / "cache", tmp_path / "runs"
    slow = ("--batch-size", "1")
    child = subprocess.Popen(
        [sys.executable, "-m", "transferlab.cli", *_run_args(many_images, tiny_weights, cache, runs, "killed", *slow)],
        env=SLOW_ENV,
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while not _shards(cache) and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert child.returncode == -signal.SIGKILL
    finished = _cached_hashes(cache)
    assert SHARD <= len(finished) < IMAGES, "the kill must land after the first shard and before the last"
    assert not (runs / "killed" / "metrics.json").exists()

    rerun = transferlab_cli(*_run_args(many_images, tiny_weights, cache, runs, "killed", *slow), env=SLOW_ENV)
    assert rerun.returncode == 0, rerun.stderr
    assert _counts(rerun.stdout) == (IMAGES - len(finished), len(finished))  # finished shards reused, none twice

    fresh = transferlab_cli(*_run_args(many_images, tiny_weights, tmp_path / "c2", runs, "clean", *slow), env=SLOW_ENV)
    assert fresh.returncode == 0, fresh.stderr
    assert _counts(fresh.stdout) == (IMAGES, 0)
    assert _metrics(runs, "killed") == _metrics(runs, "clean")


def test_two_runs_sharing_one_cache_both_finish_with_equal_metrics(
    many_images: Path, tiny_weights: Path, tmp_path: Path
) -> None:
    cache, runs = tmp_path / "cache", tmp_path / "runs"
    env = {**os.environ, "TRANSFERLAB_SHARD_SIZE": "8", "OMP_NUM_THREADS": "1"}
    children = [
        subprocess.Popen(
            [sys.executable, "-m", "transferlab.cli", *_run_args(many_images, tiny_weights, cache, runs, name)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in ("first", "second")
    ]
    outputs = [child.communicate(timeout=300) for child in children]
    for child, (_, err) in zip(children, outputs, strict=True):
        assert child.returncode == 0, err
    assert _metrics(runs, "first") == _metrics(runs, "second")
    assert len(_cached_hashes(cache)) == IMAGES  # every shard of both writers reads back whole
    assert not list(cache.glob("features/*/.*tmp"))
    third = transferlab_cli(*_run_args(many_images, tiny_weights, cache, runs, "third"), env=env)
    assert third.returncode == 0, third.stderr
    assert _counts(third.stdout) == (0, IMAGES)
    assert _metrics(runs, "third") == _metrics(runs, "first")


def _finetune_args(data: Path, weights: Path, cache: Path, runs: Path, name: str, *extra: str) -> list[str]:
    quick = ["--head-epochs", "2", "--epochs", "3", "--unfreeze", "top:1", "--augment", "none", "--no-lp-init"]
    return ["finetune", str(data), *quick, "--batch-size", "8", "--patience", "9", *extra,
            *tiny_backbone_args(weights, cache, runs, name, image_size=SIZE)]  # fmt: skip


def _curves(runs: Path, name: str) -> tuple[list, dict]:
    """Every epoch's losses and metrics (not its duration) and the final test metrics of a fine-tune."""
    record = json.loads((runs / name / "finetune.json").read_text())
    history = [{k: v for k, v in e.items() if k != "seconds"} for s in record["stages"] for e in s["history"]]
    return history, record["test_metrics"]


def test_sigkill_during_finetuning_resumes_from_the_last_checkpoint(tiny_weights: Path, tmp_path: Path) -> None:
    data = make_class_folder(tmp_path / "data", per_class=12, size=16)
    cache, runs = tmp_path / "cache", tmp_path / "runs"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # the tiny network gains nothing from threads; keeps runs equal
    checkpoint = runs / "killed" / "finetune_checkpoint.safetensors"
    child = subprocess.Popen(
        [sys.executable, "-m", "transferlab.cli", *_finetune_args(data, tiny_weights, cache, runs, "killed")],
        env=env,
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 240
    while not checkpoint.exists() and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert child.returncode == -signal.SIGKILL and checkpoint.exists(), "the kill must land between two epochs"
    assert not (runs / "killed" / "finetune.json").exists()

    resumed = transferlab_cli(*_finetune_args(data, tiny_weights, cache, runs, "killed", "--resume"), env=env)
    assert resumed.returncode == 0, resumed.stderr
    reference = transferlab_cli(*_finetune_args(data, tiny_weights, cache, runs, "clean"), env=env)
    assert reference.returncode == 0, reference.stderr
    assert _curves(runs, "killed") == _curves(runs, "clean")
    assert not checkpoint.exists()


def test_temporary_shards_of_killed_writers_are_removed_once_stale(tmp_path: Path) -> None:
    directory = FeatureCache(tmp_path, {"backbone": "x"}).directory
    stale, fresh = directory / ".shard-a.npz.1.tmp", directory / ".shard-b.npz.2.tmp"
    for temporary in (stale, fresh):
        temporary.write_bytes(b"half a shard")
    old = time.time() - STALE_TEMPORARY_SECONDS - 60
    os.utime(stale, (old, old))
    cache = FeatureCache(tmp_path, {"backbone": "x"})
    assert not stale.exists() and fresh.exists()  # a live writer's file (maybe on another machine) is left alone
    assert cache.missing(["abc"]) == ["abc"]


def test_three_sqlite_workers_on_one_study_run_every_trial_exactly_once(tiny_weights: Path, tmp_path: Path) -> None:
    from collections import Counter

    import optuna

    from transferlab.config import RunConfig
    from transferlab.prepare import prepare
    from transferlab.search.study import FINISHED, create_search_study, open_storage

    trials, url = 6, f"sqlite:///{tmp_path / 'study.db'}"
    data = make_class_folder(tmp_path / "data", per_class=12, size=16)
    config = RunConfig(str(data), "test_efficientnet", str(tiny_weights), image_size=SIZE, workers=0)
    prepared = prepare(config, cache_dir=tmp_path / "cache", progress=False)
    create_search_study(prepared, trials=trials, storage=url, study_name="shared", seed=0)
    command = [sys.executable, "-m", "transferlab.cli", "worker", "--study", "shared", "--storage", url]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    workers = [
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for _ in range(3)
    ]
    outputs = [worker.communicate(timeout=300) for worker in workers]
    for worker, (_, err) in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, err[-2000:]
    done = optuna.load_study(study_name="shared", storage=open_storage(url)).get_trials(deepcopy=False)
    assert sorted(t.number for t in done) == list(range(trials))  # none lost, none duplicated
    assert all(t.state in FINISHED for t in done), Counter(t.state.name for t in done)
    ran = [int(out.split("ran ")[1].split(" trial")[0]) for out, _ in outputs]
    assert sum(ran) == trials, ran
