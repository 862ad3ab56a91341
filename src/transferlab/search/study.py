"""Optuna head search on cached features: a study of queued trials that any number of workers can drain.

``create_search_study`` enqueues exactly the requested number of trials; every process (the ``search`` command
itself and any ``transferlab worker``) claims queued trials one at a time with the storage's atomic
WAITING→RUNNING transition, so each trial runs once, none is lost and the total equals the request even with
several machines on one PostgreSQL database. What a worker needs to rebuild the data (RunConfig, cache directory)
is stored in the study's user attributes.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sqlite3
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
import sqlalchemy
from optuna.trial import FrozenTrial, TrialState, create_trial
from sqlalchemy.engine import make_url

from transferlab.errors import TransferlabError
from transferlab.metrics import headline_name
from transferlab.record import layout
from transferlab.search.data import HeadData
from transferlab.search.space import suggest
from transferlab.search.train import train_head

if TYPE_CHECKING:
    from transferlab.config import RunConfig
    from transferlab.prepare import PreparedData

log = logging.getLogger(__name__)

DIRECTION = "minimize"  # validation loss; see train_head for why not accuracy
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
STARTUP_TRIALS = 8
# Every process working on a trial records a heartbeat this often; a RUNNING trial without one for STALE_AFTER
# seconds belonged to a killed worker (SIGKILL, lost machine, Ctrl-C): it is failed and re-queued with its params.
HEARTBEAT_SECONDS = 10
STALE_AFTER_SECONDS = 60
# RunConfig fields that steer stages but do not change what trials train on: a study resumes across them
# (e.g. rerunning with more --trials extends it).
STAGE_FIELDS = (
    "trials",
    "search_timeout",
    "search_jobs",
    "search_ensemble",
    "fractions",
    "finetune",
    "backbones",
    "workers",
    "time_limit",
    "preset",
)


def _trained_on(config: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in config.items() if name not in STAGE_FIELDS}


def default_storage(run_dir: Path) -> str:
    return f"sqlite:///{Path(run_dir).resolve() / layout.STUDY}"


def default_study_name(config: RunConfig) -> str:
    return f"heads-{config.backbone}-{config.cut_point}-seed{config.seed}"


def _sqlite_connector(url: str) -> Callable[[], sqlite3.Connection]:
    """SQLite connections in WAL mode without a sync per commit, waiting up to a minute for locks.

    Optuna writes once per epoch (intermediate value for the pruner); with the default rollback journal each write
    costs an fsync, which dominated small-head trials. WAL keeps concurrent local workers safe; NORMAL sync can only
    lose the last commits on power loss, never corrupt the study.
    """
    path = make_url(url).database or ":memory:"

    def connect() -> sqlite3.Connection:
        # isolation_level=None: no implicit BEGIN from the driver; open_storage makes every transaction
        # BEGIN IMMEDIATE instead (see there).
        connection = sqlite3.connect(path, timeout=60, check_same_thread=False, isolation_level=None)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
        return connection

    return connect


def _begin_immediate(connection: Any) -> None:
    """Take SQLite's write lock when a transaction starts, not at its first write.

    Optuna reads a row, then updates it (e.g. claiming a WAITING trial). With SQLite's default deferred
    transactions two workers can both read, and the second one's write then fails at once with "database is
    locked" (a stale WAL snapshot, which no busy timeout waits out). Starting with the lock serializes them.
    """
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def _postgres_driver(url: str) -> str:
    """SQLAlchemy 2.1 maps plain ``postgresql://`` to psycopg 3; use psycopg2 (our optional dependency) if that is
    what is installed, so users can paste the usual URL."""
    if not url.startswith("postgresql://") or importlib.util.find_spec("psycopg") is not None:
        return url
    return "postgresql+psycopg2://" + url.removeprefix("postgresql://")


def open_storage(url: str) -> optuna.storages.RDBStorage:
    """An RDB storage for ``url``; SQLite waits for locks instead of failing when several processes write."""
    sqlite = url.startswith("sqlite")
    engine_kwargs = {"creator": _sqlite_connector(url)} if sqlite else {}
    try:
        with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna since v2.8; we rely on them
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            storage = optuna.storages.RDBStorage(
                _postgres_driver(url),
                engine_kwargs=engine_kwargs,
                heartbeat_interval=HEARTBEAT_SECONDS,
                grace_period=STALE_AFTER_SECONDS,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1),
            )
        if sqlite:
            sqlalchemy.event.listen(storage.engine, "begin", _begin_immediate)
        return storage
    except ImportError as error:
        raise TransferlabError(
            f"storage {url.split(':')[0]} needs a driver: {error} (pip install psycopg2-binary)"
        ) from None
    except Exception as error:  # SQLAlchemy raises many kinds (bad URL, refused connection, auth)
        detail = " ".join(str(error).split())[:300]
        raise TransferlabError(f"cannot open study storage {url}: {type(error).__name__}: {detail}") from None


def _sampler(seed: int, study: optuna.Study | None = None) -> optuna.samplers.TPESampler:
    """TPE seeded by ``seed`` plus the trials already in the study; ``constant_liar`` keeps concurrent workers from
    sampling the same region while their trials run.

    A resumed study must not replay the random start-up suggestions of its first session, so the seed moves on with
    the study's progress; a fresh study with the same seed gets the same trials.
    """
    done = len(study.get_trials(deepcopy=False)) if study is not None else 0
    return optuna.samplers.TPESampler(
        seed=seed + done, n_startup_trials=STARTUP_TRIALS, multivariate=True, constant_liar=True
    )


def _pruner() -> optuna.pruners.BasePruner:
    return optuna.pruners.MedianPruner(n_startup_trials=STARTUP_TRIALS // 2, n_warmup_steps=4)


def create_search_study(
    prepared: PreparedData,
    *,
    trials: int,
    storage: str,
    study_name: str,
    seed: int,
    maps: bool = False,
) -> tuple[optuna.Study, optuna.storages.RDBStorage]:
    """Create (or load) the study and queue trials until it holds ``trials`` in total (rerun = resume)."""
    backend = open_storage(storage)
    study = optuna.create_study(
        storage=backend, study_name=study_name, direction=DIRECTION, load_if_exists=True, pruner=_pruner()
    )
    attrs = {
        "config": prepared.config.to_dict(),
        "cache_dir": str(prepared.cache.directory.parent.parent),
        "seed": seed,
        "maps": maps,
        "metric": headline_name(prepared.dataset.multilabel),
    }
    existing = study.user_attrs
    same_data = _trained_on(existing.get("config", attrs["config"])) == _trained_on(attrs["config"])
    if not same_data or existing.get("maps", maps) != maps:
        raise TransferlabError(
            f"study '{study_name}' in {storage} was created for another configuration; pass another --study name"
        )
    for key, value in attrs.items():
        if key not in existing:
            study.set_user_attr(key, value)
    study.sampler = _sampler(seed, study)
    missing = trials - len(study.get_trials(deepcopy=False))
    for _ in range(max(0, missing)):
        study.enqueue_trial({}, skip_if_exists=False)
    return study, backend


def _claim(storage: optuna.storages.BaseStorage, study_id: int) -> int | None:
    """Atomically move one queued trial to RUNNING; None when the queue is empty."""
    for waiting in storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.WAITING,)):
        try:
            if storage.set_trial_state_values(waiting._trial_id, state=TrialState.RUNNING):
                return waiting._trial_id
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
    return None


class CompletedSnapshot:
    """The study's completed trials as they were when a trial started: what its pruner compares against.

    ``Trial.should_prune`` makes the pruner re-read every completed trial from storage at each epoch; with epochs of
    a few milliseconds that read cost more than the training (7 s of a 33 s 50-trial search, cProfile). Reading once
    per trial sees the same trials, except those finishing on other workers meanwhile, which count from the next.
    """

    def __init__(self, study: optuna.Study) -> None:
        self.direction = study.direction
        self.directions = study.directions
        self._completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))

    def get_trials(self, deepcopy: bool = False, states: tuple[TrialState, ...] | None = None) -> list[FrozenTrial]:
        return [t for t in self._completed if states is None or t.state in states]


def _objective(data: HeadData, seed: int, maps: bool) -> Callable[[optuna.Trial], float]:
    def objective(trial: optuna.Trial) -> float:
        spec, params = suggest(trial, maps=maps, multilabel=data.multilabel)
        trial.set_user_attr("spec", spec.to_dict())
        curve: list[dict[str, float]] = []
        start = time.perf_counter()
        snapshot = CompletedSnapshot(trial.study)

        def on_epoch(row: dict[str, float]) -> None:
            curve.append(row)
            trial.report(row["val_loss"], row["epoch"])
            so_far = {int(r["epoch"]): r["val_loss"] for r in curve}
            running = create_trial(state=TrialState.RUNNING, intermediate_values=so_far)
            if trial.study.pruner.prune(snapshot, running):  # type: ignore[arg-type]  # duck-typed study
                raise optuna.TrialPruned(f"pruned at epoch {row['epoch']}")

        try:
            trained = train_head(spec, params, data, seed=seed + trial.number, on_epoch=on_epoch)
            trial.set_user_attr("val_metric", trained.best_metric)
            return trained.best_loss
        finally:
            trial.set_user_attr("curve", curve)
            trial.set_user_attr("seconds", time.perf_counter() - start)

    return objective


@contextmanager
def _heartbeat(storage: optuna.storages.RDBStorage, trial_id: int) -> Iterator[None]:
    """Tell the storage, from a background thread, that this process is still working on ``trial_id``."""
    stop = threading.Event()

    def beat() -> None:
        while True:
            storage.record_heartbeat(trial_id)
            if stop.wait(HEARTBEAT_SECONDS):
                return

    thread = threading.Thread(target=beat, name=f"heartbeat-{trial_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def run_queued_trials(
    study: optuna.Study,
    storage: optuna.storages.RDBStorage,
    data: HeadData,
    *,
    seed: int,
    maps: bool,
    timeout: float | None = None,
) -> int:
    """Drain the study's queue (shared with other workers); returns how many trials this process ran."""
    study_id = storage.get_study_id_from_name(study.study_name)
    objective = _objective(data, seed, maps)
    start, ran = time.monotonic(), 0
    while timeout is None or time.monotonic() - start < timeout:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)  # a killed worker's trial goes back to the queue
        trial_id = _claim(storage, study_id)
        if trial_id is None:
            break
        trial = optuna.Trial(study, trial_id)
        try:
            with _heartbeat(storage, trial_id):
                value = objective(trial)
        except optuna.TrialPruned:
            study.tell(trial, state=TrialState.PRUNED)
        except (ValueError, RuntimeError, FloatingPointError) as error:  # a diverging or invalid trial, not a crash
            trial.set_user_attr("error", f"{type(error).__name__}: {error}"[:500])
            study.tell(trial, state=TrialState.FAIL)
        else:
            study.tell(trial, value)
        ran += 1
        frozen = storage.get_trial(trial_id)
        value_text = "-" if frozen.value is None else f"{frozen.value:.4f}"
        log.info(
            f"trial {frozen.number:>3} {frozen.state.name:<8} {value_text}  {frozen.user_attrs.get('seconds', 0):.2f}s"
        )
    return ran


def load_search_study(study_name: str, storage: str, seed: int | None = None) -> tuple[optuna.Study, Any]:
    """An existing study (for workers) with a sampler that differs per process, so workers do not duplicate."""
    backend = open_storage(storage)
    try:
        study = optuna.load_study(study_name=study_name, storage=backend, pruner=_pruner())
    except KeyError:
        raise TransferlabError(f"no study '{study_name}' in {storage}; start it with 'transferlab search'") from None
    if "config" not in study.user_attrs:
        raise TransferlabError(f"study '{study_name}' was not created by 'transferlab search' (no config attached)")
    base = study.user_attrs["seed"] if seed is None else seed
    study.sampler = _sampler(base + os.getpid(), study)
    return study, backend


def worker_config(study: optuna.Study) -> tuple[RunConfig, str]:
    """The RunConfig and cache directory stored by the study's creator."""
    from transferlab.config import RunConfig

    return RunConfig.from_dict(study.user_attrs["config"]), study.user_attrs["cache_dir"]
