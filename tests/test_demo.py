"""The main job on the real demo photos with the real packaged EfficientNet-Lite0 (what README command 1 runs)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import DEMO, DEMO_MULTILABEL, run_with

pytestmark = pytest.mark.slow


def test_demo_photos_probe_far_above_chance_and_rerun_hits_cache(tmp_path: Path) -> None:
    options = {"cache_dir": tmp_path / "cache", "runs_dir": tmp_path / "runs", "progress": False}
    first = run_with(DEMO, name="demo", **options)
    # one pass per image: the 560 training images in bf16, the 240 validation + test images only in fp32
    assert first.extraction["computed"] == 560 and first.extraction["precision"] == "bf16"
    assert first.extraction["held_out_fp32"]["computed"] == 240
    assert first.metrics["test"]["accuracy"] > 0.6  # chance is 0.10
    assert first.report_path.is_file()
    again = run_with(DEMO, name="again", **options)
    assert again.extraction["computed"] == 0 and again.extraction["cached"] == 560
    assert again.extraction["held_out_fp32"]["computed"] == 0
    assert again.metrics == first.metrics


def test_demo_mosaics_multilabel_map(tmp_path: Path) -> None:
    result = run_with(DEMO_MULTILABEL, cache_dir=tmp_path / "c", runs_dir=tmp_path / "r", progress=False)
    assert result.record["task"] == "multi-label"
    assert result.metrics["test"]["mAP"] > 0.6 and result.metrics["test"]["macro_auc"] > 0.85
