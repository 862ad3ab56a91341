"""Head search on the tiny backbone: search.json contract, resume, reproducibility, learning curve, CLI errors."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from conftest import TINY_BACKBONE, TINY_SIZE, make_class_folder

from transferlab.cli import main
from transferlab.config import RunConfig
from transferlab.errors import TransferlabError
from transferlab.features.maps import MAP_SIZE
from transferlab.heads import HeadSpec, build_head
from transferlab.prepare import PreparedData, prepare
from transferlab.search import fraction_curve, search_heads
from transferlab.search import study as study_module
from transferlab.search.data import HeadData
from transferlab.search.space import decode, suggest
from transferlab.search.train import TrainParams, train_head


@pytest.fixture(scope="module")
def prepared(tiny_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> PreparedData:
    root = tmp_path_factory.mktemp("search")
    data = make_class_folder(root / "data", per_class=20)
    config = RunConfig(str(data), TINY_BACKBONE, str(tiny_weights), image_size=TINY_SIZE, workers=0)
    return prepare(config, cache_dir=root / "cache", progress=False)


def _search(prepared: PreparedData, run_dir: Path, trials: int, **kwargs) -> dict:
    search_heads(prepared, run_dir, trials=trials, seed=3, **kwargs)
    return json.loads((run_dir / "search.json").read_text())


def test_search_records_every_trial_and_resumes(prepared: PreparedData, tmp_path: Path) -> None:
    first = _search(prepared, tmp_path / "run", 4)
    assert first["n_trials"] == 4 and [t["number"] for t in first["trials"]] == [0, 1, 2, 3]
    assert first["storage"] == f"sqlite:///{(tmp_path / 'run' / 'study.db').resolve()}"
    for trial in first["trials"]:
        assert trial["state"] in {"COMPLETE", "PRUNED", "FAIL"}
        assert trial["seconds"] > 0 and trial["curve"][0]["epoch"] == 1
        assert set(trial["curve"][0]) == {"epoch", "train_loss", "val_loss", "train_metric", "val_metric"}
    best = first["best"]
    spec, _ = decode(best["params"], multilabel=False)
    assert HeadSpec.from_dict(best["spec"]) == spec and best["head_params"] > 0
    assert 0 <= first["test_metrics"]["accuracy"] <= 1 and "accuracy" in first["probe_test_metrics"]
    assert f"Trial {best['number']} won" in first["explanation"] and "plain probe" in first["explanation"]

    resumed = _search(prepared, tmp_path / "run", 6)
    assert resumed["n_trials"] == 6
    assert [t["params"] for t in resumed["trials"][:4]] == [t["params"] for t in first["trials"]]
    old = {json.dumps(t["params"], sort_keys=True) for t in first["trials"]}
    assert not any(json.dumps(t["params"], sort_keys=True) in old for t in resumed["trials"][4:])


def test_same_seed_same_trials(prepared: PreparedData, tmp_path: Path) -> None:
    one = _search(prepared, tmp_path / "a", 3)
    two = _search(prepared, tmp_path / "b", 3)
    assert [(t["params"], t["value"], t["state"]) for t in one["trials"]] == [
        (t["params"], t["value"], t["state"]) for t in two["trials"]
    ]


def test_local_workers_share_the_study_and_run_every_trial_once(
    prepared: PreparedData, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="transferlab")
    search_heads(prepared, tmp_path / "run", trials=10, seed=3, jobs=2)
    lines = [record.getMessage() for record in caplog.records]
    record = json.loads((tmp_path / "run" / "search.json").read_text())
    assert record["jobs"] == 2 and record["n_trials"] == 10
    assert sorted(t["number"] for t in record["trials"]) == list(range(10))
    trial_lines = [line for line in lines if "trial" in line]
    assert len(trial_lines) == 10  # each trial reported once, by whichever process ran it
    assert any(line.startswith("[1] trial") for line in trial_lines), "the forked worker ran no trial"
    assert any(line.startswith("trial") for line in trial_lines), "the calling process ran no trial"


def test_winner_rewritten_for_raw_features_gives_the_same_logits(prepared: PreparedData) -> None:
    data = HeadData.from_prepared(prepared)
    spec = HeadSpec(widths=(16,), dropout=0.2, batchnorm=True)
    trained = train_head(spec, TrainParams(epochs=3), data)
    raw_head = data.on_raw_features(trained.head)
    raw = torch.from_numpy(prepared.features()["val"])
    with torch.no_grad():
        expected = trained.head.eval()(data.pooled["val"])
        np.testing.assert_allclose(raw_head.eval()(raw).numpy(), expected.numpy(), rtol=1e-4, atol=1e-4)
    assert not torch.equal(raw_head.dense[1].weight, trained.head.dense[1].weight)  # a copy, the original intact
    assert data.on_raw_features(build_head(HeadSpec(pooling="max"), data.in_channels, 1, 2)) is None


def test_trial_of_a_killed_worker_is_failed_and_rerun_with_its_params(
    prepared: PreparedData, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(study_module, "HEARTBEAT_SECONDS", 1)
    monkeypatch.setattr(study_module, "STALE_AFTER_SECONDS", 2)
    storage_url = f"sqlite:///{tmp_path / 'study.db'}"
    study, storage = study_module.create_search_study(
        prepared, trials=3, storage=storage_url, study_name="killed", seed=0
    )
    # what a SIGKILLed worker leaves behind: a claimed trial with parameters and a heartbeat, never finished
    claimed = study_module._claim(storage, storage.get_study_id_from_name("killed"))
    suggest(optuna.Trial(study, claimed), maps=False, multilabel=False)
    storage.record_heartbeat(claimed)
    time.sleep(3)
    data = HeadData.from_prepared(prepared)
    ran = study_module.run_queued_trials(study, storage, data, seed=0, maps=False)
    trials = study.get_trials(deepcopy=False)
    dead = storage.get_trial(claimed)
    assert dead.state == optuna.trial.TrialState.FAIL
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == dead.number]
    assert len(retries) == 1 and retries[0].params == dead.params and retries[0].state in study_module.FINISHED
    assert ran == 3  # two never-started trials plus the retry
    assert all(t.state in study_module.FINISHED for t in trials)


def test_prediction_averages_the_top_heads_by_validation_loss(prepared: PreparedData, tmp_path: Path) -> None:
    record = _search(prepared, tmp_path / "run", 5, ensemble=3)
    complete = sorted((t for t in record["trials"] if t["state"] == "COMPLETE"), key=lambda t: t["value"])
    members = [t["number"] for t in complete[:3]]
    assert len(members) >= 2 and record["ensemble"]["trials"] == members
    assert record["best"]["number"] == members[0]
    # each member is its trial's head, refitted with the trial's seed; the prediction is their mean probability
    data = HeadData.from_prepared(prepared)
    probabilities = []
    for number in members:
        spec, params = decode(next(t["params"] for t in complete if t["number"] == number), multilabel=False)
        head = train_head(spec, params, data, seed=3 + number).head
        with torch.no_grad():
            probabilities.append(torch.softmax(head.eval()(data.pooled["test"]), dim=1).numpy())
    y_test = prepared.targets()["test"]
    assert record["best"]["test_metrics"]["accuracy"] == pytest.approx(np.mean(probabilities[0].argmax(1) == y_test))
    averaged = np.mean(probabilities, axis=0).argmax(1)
    assert record["test_metrics"]["accuracy"] == pytest.approx(np.mean(averaged == y_test))
    assert f"average of the top {len(members)} heads" in record["explanation"]

    single = _search(prepared, tmp_path / "run", 5, ensemble=1)  # same study, resumed: only the prediction changes
    assert single["ensemble"]["trials"] == members[:1] and single["test_metrics"] == single["best"]["test_metrics"]
    with pytest.raises(TransferlabError, match="--ensemble must be >= 1"):
        search_heads(prepared, tmp_path / "run", trials=5, ensemble=0)


def test_jobs_below_one_is_a_user_error(prepared: PreparedData, tmp_path: Path) -> None:
    with pytest.raises(TransferlabError, match="--jobs must be >= 1"):
        search_heads(prepared, tmp_path / "run", trials=1, jobs=0)


def test_fraction_curve_grows_nested_subsets(prepared: PreparedData) -> None:
    params = {"pooling": "avg", "n_layers": 0, "dropout": 0.0, "lr": 0.01, "weight_decay": 1e-4}
    curve = fraction_curve(prepared, {**params, "batch_size": 32, "epochs": 10}, [1, 0.25, 0.5], seed=0)
    assert curve["metric"] == "accuracy"
    assert [r["fraction"] for r in curve["rows"]] == [0.25, 0.5, 1]
    sizes = [r["n_train"] for r in curve["rows"]]
    assert sizes == sorted(sizes) and sizes[-1] == len(prepared.targets()["train"]) and sizes[0] < sizes[-1]
    assert all(0 <= r["train_metric"] <= 1 and 0 <= r["val_metric"] <= 1 for r in curve["rows"])


def test_cli_search_writes_search_and_fractions(tiny_run_options: dict, class_folder: Path, capsys) -> None:
    options = tiny_run_options
    argv = ["search", str(class_folder), "--backbone", options["backbone"], "--weights", options["weights"]]
    argv += ["--image-size", str(TINY_SIZE), "--cache-dir", options["cache_dir"], "--runs-dir", options["runs_dir"]]
    argv += ["--workers", "0", "--no-progress", "--trials", "2", "--fractions", "0.5,1", "--name", "s"]
    assert main(argv) == 0
    run_dir = Path(options["runs_dir"]) / "s"
    assert json.loads((run_dir / "search.json").read_text())["n_trials"] == 2
    assert [r["fraction"] for r in json.loads((run_dir / "fractions.json").read_text())["rows"]] == [0.5, 1]
    assert "plain probe" in capsys.readouterr().out
    assert main([*argv[:-4], "--fractions", "0,2", "--name", "s"]) == 2
    assert "--fractions must lie in (0, 1]" in capsys.readouterr().err
    # the same command with a larger budget extends the study instead of refusing it as another configuration
    more = [*argv[:-6], "--trials", "3", "--name", "s"]
    assert main(more) == 0, capsys.readouterr().err
    assert json.loads((run_dir / "search.json").read_text())["n_trials"] == 3


def test_worker_on_unknown_study_is_a_user_error(tmp_path: Path, capsys) -> None:
    assert main(["worker", "--study", "nope", "--storage", f"sqlite:///{tmp_path / 'x.db'}"]) == 2
    assert "no study 'nope'" in capsys.readouterr().err


def test_maps_are_cached_as_float16_and_train_map_heads(prepared: PreparedData, tmp_path: Path) -> None:
    maps = prepared.maps()
    pooled = prepared.features()
    assert maps["train"].dtype == np.float16 and maps["train"].ndim == 4
    assert maps["train"].shape[2] <= MAP_SIZE and len(maps["val"]) == len(pooled["val"])
    # the pooled 'head' vector is the global average of the final map
    np.testing.assert_allclose(maps["train"].astype(np.float32).mean(axis=(2, 3)), pooled["train"], atol=0.05)
    shards = sorted(prepared.cache.directory.parent.glob("*/shard-*.npz"))
    assert prepared.maps()["test"].shape == maps["test"].shape
    assert sorted(prepared.cache.directory.parent.glob("*/shard-*.npz")) == shards  # second call: no recompute

    params = {"pooling": "conv1x1", "conv_pooling": "flatten", "flatten_channels": 16, "extra_maxpool": True}
    params |= {"n_layers": 0, "batchnorm": True, "activation": "relu", "dropout": 0.1}
    params |= {"lr": 0.01, "weight_decay": 1e-4, "batch_size": 32, "epochs": 10}
    spec, _ = decode(params, multilabel=False)
    assert spec.final_pooling == "flatten" and spec.conv_channels == 16
    # a study stored before conv_pooling was searched still decodes (to its average pooling)
    legacy = {**params, "conv_channels": 64, "conv_pooling": None}
    del legacy["conv_pooling"], legacy["flatten_channels"]
    assert decode(legacy, multilabel=False)[0].final_pooling == "avg"
    curve = fraction_curve(prepared, params, [1], seed=0)
    assert curve["rows"][0]["n_train"] == len(pooled["train"])
    record = _search(prepared, tmp_path / "maps", 4, maps=True)
    assert record["n_trials"] == 4 and record["best"]["spec"]["output"] == "softmax"
