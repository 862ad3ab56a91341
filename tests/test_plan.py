"""The time-budget planner: durations, the plan it prints and records, keeping to a small limit, explicit flags
winning, an impossible budget, and a rerun after an interruption continuing from the cache."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from conftest import run_with

from transferlab.budget import Clock, format_duration, parse_duration
from transferlab.cli import main
from transferlab.config import RunConfig
from transferlab.errors import TransferlabError
from transferlab.plan import make_plan
from transferlab.record import layout


@pytest.mark.parametrize(
    ("text", "seconds"), [("90", 90), ("90s", 90), ("10m", 600), ("2h", 7200), ("1h30m", 5400), ("1.5m", 90)]
)
def test_durations_read_as_people_write_them(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds
    assert RunConfig("x", time_limit=text).time_limit == seconds


@pytest.mark.parametrize("text", ["ten minutes", "10x", "m", "0s", "-5"])
def test_bad_durations_are_one_line_errors(text: str) -> None:
    with pytest.raises(TransferlabError, match="--time-limit"):
        parse_duration(text)


def test_format_duration() -> None:
    assert [format_duration(s) for s in (4.2, 65, 3725)] == ["4 s", "1 min 05 s", "1 h 02 min"]


def test_unknown_preset_is_a_one_line_error() -> None:
    with pytest.raises(TransferlabError, match="--preset must be one of fast, balanced, best"):
        RunConfig("x", preset="quick")


def _config(class_folder: Path, options: dict, **changes) -> RunConfig:
    fields = {k: v for k, v in options.items() if k not in ("cache_dir", "runs_dir", "progress")}
    return RunConfig(str(class_folder), **fields, **changes)


def test_plan_measures_before_spending_and_counts_cached_features(class_folder: Path, tiny_run_options: dict) -> None:
    config = _config(class_folder, tiny_run_options, time_limit=60)
    plan = make_plan(config, Clock(60), tiny_run_options["cache_dir"])
    cost = plan.costs[config.backbone]
    assert plan.backbones == [config.backbone]  # an explicit backbone is the only candidate
    assert cost.images == 36 and cost.cached == 0 and cost.decode > 0 and cost.forward > 0
    assert plan.steps[0].stage == f"probe {config.backbone}" and plan.steps[0].estimate > 0
    assert "plan for 1 min 00 s" in plan.table() and f"1. probe {config.backbone}" in plan.table()
    run_with(class_folder, **tiny_run_options)  # fills the cache
    again = make_plan(config, Clock(60), tiny_run_options["cache_dir"])
    assert again.costs[config.backbone].cached == 36
    assert again.steps[0].estimate < plan.steps[0].estimate  # cached features cost nothing to extract


def test_a_small_limit_is_kept_and_plan_vs_actual_recorded(class_folder: Path, tiny_run_options: dict) -> None:
    started = time.monotonic()
    result = run_with(class_folder, **tiny_run_options, time_limit=20)
    assert time.monotonic() - started < 40
    plan = json.loads((result.run_dir / layout.PLAN).read_text())
    assert plan["limit_seconds"] == 20 and plan["elapsed_seconds"] < 40
    first = plan["steps"][0]
    assert first["status"] == "done" and first["actual"] > 0 and first["estimate"] > 0
    assert (result.run_dir / layout.PROBE_WEIGHTS).is_file()  # a usable model, always
    report = (result.run_dir / layout.REPORT).read_text()
    assert "Plan vs actual" in report and "probe test_efficientnet" in report


def test_explicit_stage_flags_win_over_the_plan(class_folder: Path, tiny_run_options: dict) -> None:
    result = run_with(class_folder, **tiny_run_options, preset="fast", trials=2, search_ensemble=1)
    plan = json.loads((result.run_dir / layout.PLAN).read_text())
    assert plan["preset"] == "fast" and plan["limit_seconds"] == 120
    search = next(s for s in plan["steps"] if s["stage"] == "head search")  # 'fast' plans no search; --trials does
    assert search["status"] == "done" and (result.run_dir / layout.SEARCH).is_file()
    assert result.config.trials == 2 and result.config.finetune is None


def test_the_planner_adds_fine_tuning_when_it_fits_and_keeps_to_the_limit(
    class_folder: Path, tiny_run_options: dict
) -> None:
    started = time.monotonic()
    result = run_with(class_folder, **tiny_run_options, time_limit=45)
    assert time.monotonic() - started < 45 + 30
    plan = json.loads((result.run_dir / layout.PLAN).read_text())
    finetune = next(s for s in plan["steps"] if s["stage"] == "fine-tune")
    assert finetune["status"] == "done" and plan["finetune"]["epochs"] >= 3
    record = json.loads((result.run_dir / layout.FINETUNE).read_text())
    assert all(stage["stop_reason"] for stage in record["stages"])


def test_an_impossible_budget_says_how_much_is_needed(class_folder: Path, tiny_run_options: dict, capsys) -> None:
    with pytest.raises(TransferlabError, match=r"too small here: .* needs about \d+ s; give at least --time-limit"):
        run_with(class_folder, **tiny_run_options, time_limit=0.01)
    options = tiny_run_options
    argv = [
        "run",
        str(class_folder),
        "--time-limit",
        "0.01s",
        "--backbone",
        options["backbone"],
        "--weights",
        options["weights"],
        "--image-size",
        str(options["image_size"]),
        "--cache-dir",
        options["cache_dir"],
        "--runs-dir",
        options["runs_dir"],
        "--no-progress",
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --time-limit 0 s is too small here")


def test_an_interrupted_planned_run_continues_from_the_cache(
    class_folder: Path, tiny_run_options: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    import transferlab.pipeline as pipeline

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(pipeline, "_fit_probes", interrupted)  # Ctrl-C after extraction, during the probe
        with pytest.raises(KeyboardInterrupt):
            run_with(class_folder, **tiny_run_options, time_limit=60)
    result = run_with(class_folder, **tiny_run_options, time_limit=60)
    held_out = result.extraction["held_out_fp32"] or {"computed": 0}
    assert result.extraction["computed"] == 0 and held_out["computed"] == 0 and result.extraction["cached"] > 0
    plan = json.loads((result.run_dir / layout.PLAN).read_text())
    assert plan["costs"][result.config.backbone]["cached"] == 36


def test_extraction_past_its_deadline_stops_and_keeps_what_it_cached(tmp_path: Path, tiny_weights: Path) -> None:
    from conftest import TINY_BACKBONE, make_class_folder

    from transferlab.backbones.model import load_backbone
    from transferlab.errors import OutOfTime
    from transferlab.features.cache import content_hash
    from transferlab.features.extract import FP32, extract_features, feature_cache

    paths = sorted(make_class_folder(tmp_path / "data", per_class=6).rglob("*.png"))
    digests = [content_hash(p) for p in paths]
    backbone = load_backbone(TINY_BACKBONE, tiny_weights, image_size=32)
    cache = feature_cache(backbone, tmp_path / "cache", FP32)
    options = {"precision": FP32, "batch_size": 4, "workers": 0, "progress": False}
    with pytest.raises(OutOfTime, match="out of time after 4 of 18 images"):
        extract_features(backbone, paths, digests, cache, **options, deadline=time.monotonic() - 1)
    cache.refresh()
    assert len(digests) - len(cache.missing(digests)) == 4  # the finished batch is cached
    report = extract_features(backbone, paths, digests, cache, **options)
    assert report.cached == 4 and report.computed == 14


def test_a_backbone_that_may_fit_is_planned_as_optional_and_marked_when_not_reached(
    class_folder: Path, tiny_run_options: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Costs injected (measured under load they run long): a second backbone estimated at up to twice the time
    left is planned as optional; one far past it is not planned; a step never reached reads 'skipped'."""
    from transferlab.plan import planner
    from transferlab.plan.costs import BackboneCost
    from transferlab.plan.keeper import Budget
    from transferlab.record import RunDir

    def cost(name: str, forward: float) -> BackboneCost:
        return BackboneCost(name, None, 64, 0.0, forward, forward, forward, 36, 0, 64)

    config = _config(class_folder, tiny_run_options, time_limit=60)
    for forward, planned in ((2.0, True), (10.0, False)):  # 36 images: ~73 s (≤ 2× the ~50 s left) vs ~360 s
        costs = {config.backbone: cost(config.backbone, 0.1), "second": cost("second", forward)}
        monkeypatch.setattr(planner, "measure_backbone", lambda _c, name, *rest, costs=costs: costs[name])
        monkeypatch.setattr(planner, "_candidates", lambda *_: [(config.backbone, None), ("second", None)])
        plan = planner.make_plan(config, Clock(60), tiny_run_options["cache_dir"])
        assert ("second" in plan.backbones) == planned
        if planned:
            step = plan.step("probe second")
            assert "finish early" in step.note and plan.step(planner.ENSEMBLE_STAGE).status == "planned"
            run_dir = RunDir(Path(tiny_run_options["runs_dir"]), "optional")
            Budget(plan, Clock(60), progress=False).close(run_dir)
            assert {s.status for s in plan.steps} == {"skipped"}  # nothing ran here: every step says so
