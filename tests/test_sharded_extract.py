"""Extraction shared by the ranks of a real ``torchrun`` job: every image computed once, the features of one process."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
from conftest import TINY_BACKBONE, TINY_SIZE, make_class_folder

from transferlab.backbones import load_backbone
from transferlab.config import RunConfig
from transferlab.errors import TransferlabError
from transferlab.features.cache import HASHES, content_hash
from transferlab.features.extract import FP32, _Forward, extract_features, feature_cache, plan_shards, rank_share
from transferlab.prepare import prepare

SHARD = 4


@dataclass
class _Rank:
    """One rank of ``transferlab.distributed.Distributed`` in this process: the ranks run one after another, rank 0
    first, so its broadcast plan is what the later ones receive and the barrier has no one to wait for."""

    rank: int
    world_size: int
    fingerprints: list[Any] | None = None
    plans: ClassVar[list[Any]] = []
    enabled = True

    is_main = property(lambda self: self.rank == 0)

    def gather(self, value: Any) -> list[Any]:
        return self.fingerprints or [value] * self.world_size

    def broadcast(self, value: Any) -> Any:
        if self.is_main:
            _Rank.plans[:] = [value]
        return _Rank.plans[0]

    def barrier(self) -> None:
        pass


def test_ranks_take_disjoint_whole_shards_of_rank_0s_plan(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRANSFERLAB_SHARD_SIZE", str(SHARD))
    digests = [f"{n:064x}" for n in (9, 3, 7, 1, 5, 3, 8, 2, 6, 4, 0)]  # 3 appears twice: computed once
    todo = [i for i, d in enumerate(digests) if d not in {digests[0]} and digests.index(d) == i]  # 9 is cached
    shares = [rank_share(digests, todo, _Rank(rank, 2)) for rank in (0, 1)]  # rank 0 plans first
    computed = [[int(digests[i], 16) for i in share] for share in shares]
    assert computed == [[0, 1, 4, 5], [2, 3, 6, 7, 8]]  # content-hash order; 4 shards of <= 4: 0 and 2 | 1 and 3
    assert not set(shares[0]) & set(shares[1]) and len(shares[0]) + len(shares[1]) == len(todo)


def test_shards_are_equal_between_ranks_and_never_past_the_shard_size(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRANSFERLAB_SHARD_SIZE", raising=False)
    sizes = {n: [len(shard) for shard in plan_shards([f"{i:064x}" for i in range(n)], 2)] for n in (0, 800, 1100)}
    assert sizes == {0: [], 800: [400, 400], 1100: [275] * 4}  # shard_size() 512


def test_ranks_that_see_different_images_stop_with_one_line() -> None:
    seen = [(3, "a"), (2, "b")]
    with pytest.raises(TransferlabError, match=r"different images \(rank 0: 3, rank 1: 2\).*same DATA"):
        rank_share(["0" * 64], [0], _Rank(1, 2, fingerprints=seen))


def test_a_killed_rank_loses_only_its_unfinished_shard(
    tmp_path: Path, tiny_weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRANSFERLAB_SHARD_SIZE", "2")
    backbone = load_backbone(TINY_BACKBONE, tiny_weights, image_size=32)
    paths = sorted(make_class_folder(tmp_path / "data", per_class=4).rglob("*.png"))  # 12 images
    digests = [content_hash(path) for path in paths]
    options: dict[str, Any] = {"precision": FP32, "workers": 0, "progress": False, "batch_size": 1}
    root = tmp_path / "cache"
    done = extract_features(
        backbone, paths, digests, feature_cache(backbone, root, FP32), distributed=_Rank(0, 2), **options
    )
    assert done.computed == 6  # rank 0: shards 0 and 2 of its plan (2 images each) and shard 4
    run = _Forward._run
    computed: list[int] = []

    def killed_during_its_second_shard(self: _Forward, chunk: torch.Tensor) -> dict[str, np.ndarray]:
        if len(computed) == 3:
            raise KeyboardInterrupt  # like a SIGKILL at its 4th image: the 3rd, computed, is never flushed
        computed.append(len(chunk))
        return run(self, chunk)

    monkeypatch.setattr(_Forward, "_run", killed_during_its_second_shard)
    with pytest.raises(KeyboardInterrupt):
        extract_features(
            backbone, paths, digests, feature_cache(backbone, root, FP32), distributed=_Rank(1, 2), **options
        )
    monkeypatch.setattr(_Forward, "_run", run)
    again = extract_features(backbone, paths, digests, feature_cache(backbone, root, FP32), **options)  # a rerun
    assert (again.cached, again.computed) == (6 + 2, 4)  # rank 1: its finished shard kept, its 3rd image lost
    rows = [row for rows in _shard_rows(root).values() for row in rows]
    assert len(rows) == len(set(rows)) == 12  # and nothing was computed twice


class _ThreadRank:
    """One of ``world_size`` ranks running in threads of this process; ``gather`` really exchanges values."""

    board: ClassVar[list[Any]] = []
    meeting: ClassVar[threading.Barrier]

    def __init__(self, rank: int, world_size: int) -> None:
        self.rank, self.world_size, self.enabled, self.is_main = rank, world_size, True, rank == 0

    def gather(self, value: Any) -> list[Any]:
        self.board[self.rank] = value
        self.meeting.wait()
        gathered = list(self.board)
        self.meeting.wait()
        return gathered


def test_each_file_is_hashed_by_one_rank_and_every_rank_gets_all_hashes(
    class_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import transferlab.prepare as prepare_module
    from transferlab.data import load_dataset

    dataset = load_dataset(str(class_folder))
    alone = prepare_module.hash_files(dataset)
    hashed: list[str] = []
    real_hash = prepare_module.content_hash
    monkeypatch.setattr(prepare_module, "content_hash", lambda path: hashed.append(str(path)) or real_hash(path))
    _ThreadRank.board, _ThreadRank.meeting = [None, None], threading.Barrier(2)
    results: list[Any] = [None, None]

    def rank(number: int) -> None:
        results[number] = prepare_module.hash_files(dataset, _ThreadRank(number, 2))

    threads = [threading.Thread(target=rank, args=(number,)) for number in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(hashed) == sorted(str(dataset.absolute(i)) for i in range(len(dataset)))  # each file once
    assert results[0] == results[1] == alone  # the same digests, in the same order, as one process


def _torchrun_args(data: Path, weights: Path, cache: Path, batch_size: int = SHARD) -> dict[str, Any]:
    """``subprocess`` arguments for ``torchrun --nproc_per_node 2 -m transferlab extract DATA`` on the tiny backbone."""
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "transferlab", "extract", str(data), "--backbone", TINY_BACKBONE, "--weights", str(weights),
        "--image-size", str(TINY_SIZE), "--workers", "0", "--batch-size", str(batch_size), "--device", "cpu",
        "--cache-dir", str(cache), "--no-progress",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TRANSFERLAB_SHARD_SIZE": str(SHARD)}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parents[1] / "src"), env.get("PYTHONPATH", "")])
    return {"args": command, "env": env, "text": True}


def _torchrun(data: Path, weights: Path, cache: Path, batch_size: int = SHARD) -> subprocess.CompletedProcess:
    arguments = _torchrun_args(data, weights, cache, batch_size)
    return subprocess.run(**arguments, capture_output=True, timeout=240, check=False)


def _worker_of_rank(launcher: int, rank: int) -> int | None:
    """The pid of the torchrun worker with ``RANK=rank`` among ``launcher``'s children, if it is running yet."""
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines() if ":\t" in line)
            if int(fields["PPid"]) == launcher:
                environ = (status.parent / "environ").read_bytes().split(b"\0")
                if f"RANK={rank}".encode() in environ:
                    return int(status.parent.name)
        except (OSError, KeyError, ValueError):  # a process that ended meanwhile
            continue
    return None


def _shard_rows(cache: Path) -> dict[str, list[str]]:
    """Per cache key (one per precision), every content hash written into its shards, repeats included."""
    rows: dict[str, list[str]] = {}
    for shard in sorted(cache.glob("features/*/shard-*.npz")):
        with np.load(shard) as data:
            rows.setdefault(shard.parent.name, []).extend(data[HASHES].astype(str).tolist())
    return rows


def test_two_torchrun_ranks_compute_each_image_once_into_one_cache(
    tmp_path: Path, tiny_weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRANSFERLAB_SHARD_SIZE", str(SHARD))
    data = make_class_folder(tmp_path / "data", per_class=8)  # 24 images
    (data / "red" / "broken.png").write_text("not an image")
    config = RunConfig(
        data=str(data), backbone=TINY_BACKBONE, weights=str(tiny_weights), image_size=TINY_SIZE, workers=0,
        batch_size=SHARD, device="cpu",
    )  # fmt: skip
    single = prepare(config, cache_dir=tmp_path / "single", progress=False)
    assert single.extraction.precision == "bf16" and single.held_out is not None  # both precisions are in play
    # A killed job's finished shard is all a rerun finds: one shard of the single-process cache, copied over.
    kept = sorted((tmp_path / "single").glob("features/*/shard-*.npz"))[0]
    (tmp_path / "shared" / kept.parent.relative_to(tmp_path / "single")).mkdir(parents=True)
    shutil.copy(kept, tmp_path / "shared" / kept.relative_to(tmp_path / "single"))
    with np.load(kept) as shard:
        survived = len(shard[HASHES])

    done = _torchrun(data, tiny_weights, tmp_path / "shared")
    assert done.returncode == 0, done.stderr[-3000:]
    counts = re.search(r"features: (\d+) computed \(rank 0: (\d+), rank 1: (\d+)\), \d+ from cache", done.stdout)
    assert counts and done.stdout.count("features:") == 1, done.stdout  # one voice: rank 0's
    total, rank0, rank1 = map(int, counts.groups())
    computed_alone = _shard_rows(tmp_path / "single")
    assert total == sum(map(len, computed_alone.values())) - survived and rank0 > 0 and rank1 > 0
    assert rank0 + rank1 == total
    rows = _shard_rows(tmp_path / "shared")  # each image computed once per precision, across ranks and runs
    assert all(len(digests) == len(set(digests)) for digests in rows.values())
    assert {key: sorted(digests) for key, digests in rows.items()} == {
        key: sorted(digests) for key, digests in computed_alone.items()
    }  # and the same images at the same precisions as one process
    output = done.stdout + done.stderr
    assert output.count("skipped red/broken.png") == 1  # named once, by the rank that met it

    shared = prepare(config, cache_dir=tmp_path / "shared", progress=False)  # a following run extracts nothing
    assert shared.extraction.computed == 0 and shared.held_out is not None and shared.held_out.report.computed == 0
    assert shared.hashes == single.hashes and [str(p) for p in shared.problems] == [str(p) for p in single.problems]
    for cut_point in [*single.backbone.cut_points, "head"]:
        ours, theirs = single.features(cut_point), shared.features(cut_point)
        for split in ("train", "val", "test"):
            np.testing.assert_allclose(theirs[split], ours[split], rtol=1e-5, atol=1e-6)


def test_extract_fills_the_cache_so_a_following_run_extracts_nothing(
    class_folder: Path, tiny_weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from transferlab.cli import main

    options = [
        str(class_folder), "--backbone", TINY_BACKBONE, "--weights", str(tiny_weights), "--image-size", str(TINY_SIZE),
        "--workers", "0", "--cache-dir", str(tmp_path / "cache"), "--no-progress",
    ]  # fmt: skip
    assert main(["extract", *options]) == 0
    assert "features: 36 computed, 0 from cache, 0 skipped" in capsys.readouterr().out
    assert main(["run", *options, "--runs-dir", str(tmp_path / "runs")]) == 0
    assert "features: 0 computed, 36 from cache" in capsys.readouterr().out
    with pytest.raises(SystemExit):  # extract writes no run directory, so it takes no --name
        main(["extract", *options, "--name", "x"])


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the rank's process through /proc")
def test_sigkill_of_one_torchrun_rank_keeps_finished_shards_and_a_rerun_completes(
    tmp_path: Path, tiny_weights: Path
) -> None:
    data = make_class_folder(tmp_path / "data", per_class=40, size=16)  # 120 images, batch 1: slow enough to catch
    cache = tmp_path / "cache"
    launcher = subprocess.Popen(
        **_torchrun_args(data, tiny_weights, cache, batch_size=1), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    deadline, victim = time.monotonic() + 120, None
    while launcher.poll() is None and time.monotonic() < deadline:
        victim = victim or _worker_of_rank(launcher.pid, 1)
        if victim and _shard_rows(cache):
            os.kill(victim, signal.SIGKILL)
            break
        time.sleep(0.005)
    launcher.communicate(timeout=120)
    assert launcher.returncode != 0, "rank 1 must be killed before the job finishes"
    finished = [row for rows in _shard_rows(cache).values() for row in rows]
    assert SHARD <= len(finished) < 120 and len(finished) == len(set(finished))

    done = _torchrun(data, tiny_weights, cache, batch_size=1)
    assert done.returncode == 0, done.stderr[-3000:]
    counts = re.search(r"features: (\d+) computed \(rank 0: \d+, rank 1: \d+\), (\d+) from cache", done.stdout)
    assert counts and tuple(map(int, counts.groups())) == (120 - len(finished), len(finished)), done.stdout
    rows = [row for rows in _shard_rows(cache).values() for row in rows]
    assert len(rows) == len(set(rows)) == 120  # the killed job's shards reused, none computed twice
