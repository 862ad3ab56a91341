"""report.html: built from the run directory alone, every section present when its file is, absent when not."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import run_with
from runfactory import ALL_SECTIONS, EVIL, make_run

from transferlab.cli import main
from transferlab.report import write_report


def _section_ids(html: str) -> set[str]:
    return set(re.findall(r'<h2 id="([\w-]+)"', html))


def _images(html: str) -> list[str]:
    return re.findall(r'<img [^>]*src="([^"]*)"', html)


@pytest.fixture(scope="module")
def complete_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """One complete run directory and its report, shared by the tests that only read them (rendering is slow)."""
    run_path = make_run(tmp_path_factory.mktemp("runs"))
    return run_path, write_report(run_path).read_text()


def test_complete_run_has_every_section_inline(complete_run: tuple[Path, str]) -> None:
    run_path, html = complete_run
    assert set(ALL_SECTIONS) <= _section_ids(html)
    assert "roc-pr" not in _section_ids(html)  # single-label
    sources = _images(html)
    # 2 stage curves + best trial, confusion, per-class, 4 thumbnails, augmentation, importance, fraction curve
    assert len(sources) == 12
    assert all(source.startswith("data:image/png;base64,") for source in sources)
    assert "http://" not in html and "https://" not in html and "<link" not in html
    assert "restart at epoch 2" in html and "Fine-tuning stage &#39;top blocks&#39;" in html
    assert html.count("head started from: probe") == 1  # said once, on the first stage
    assert "812 MB" in html and "0.012" in html and "2.50 s" in html  # peak memory, GFLOPs, seconds per epoch
    assert "<td>features computed in</td><td>bf16</td>" in html
    assert "fine-tuned" in html and "0.8600" in html  # the final model's test accuracy
    # the search's prediction (top-2 average) and its single winner, each with its own test accuracy
    assert "top-2 searched heads averaged" in html and "0.8300" in html
    assert "best searched head" in html and "0.8167" in html
    assert "Trial 0 won with the lowest validation loss." in html and "(minimize val_loss)" in html
    assert html.count('class="member"') == 1  # trial 2; trial 0 is marked as the best
    assert (run_path / "advice.json").is_file()


def test_user_strings_are_escaped(complete_run: tuple[Path, str]) -> None:
    html = complete_run[1]
    assert EVIL not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert html.count("<script>") == 1  # only the report's own script block


def test_worst_errors_are_confident_val_mistakes(complete_run: tuple[Path, str]) -> None:
    html = complete_run[1]
    gallery = html.split('id="worst"')[1].split("<h2")[0]
    shown = re.findall(r"img_(\d+)\.png</span>", gallery)
    # val rows are images 0-5; mistakes are 2..5, ordered by confidence (descending).
    assert shown == ["005", "004", "003", "002"]


def test_missing_files_leave_sections_out(tmp_path: Path) -> None:
    run_path = make_run(tmp_path, stages=False)
    for name in ("predictions.csv", "problems.txt", "process.json"):
        (run_path / name).unlink()
    html = write_report(run_path).read_text()
    sections = _section_ids(html)
    assert {"metrics", "confusion", "per-class", "cost"} <= sections
    assert not sections & {"curves", "worst", "augmentation", "ranking", "trials", "fractions", "problems", "roc-pr"}
    assert "peak memory" not in html


def test_multilabel_report_has_roc_pr(tmp_path: Path) -> None:
    html = write_report(make_run(tmp_path, multilabel=True, stages=False)).read_text()
    sections = _section_ids(html)
    assert "roc-pr" in sections and "confusion" not in sections
    assert "mAP" in html and "(median over labels)" in html


def test_report_of_a_real_run(class_folder: Path, tiny_run_options: dict) -> None:
    result = run_with(class_folder, name="real", **tiny_run_options)  # writes its report with write_report
    html = result.report_path.read_text()
    assert {"metrics", "confusion", "per-class", "cost", "advice"} <= _section_ids(html)
    assert "small_data_regime" in html  # 12 images per class
    assert all(source.startswith("data:image/png;base64,") for source in _images(html))


def test_report_command_rebuilds_report_and_prints_advice(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_path = make_run(tmp_path, "r", stages=False)
    assert main(["report", "r", "--runs-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "[warning] Overfitting (linear probe): train accuracy 0.970 vs validation 0.780" in out
    assert f"report: {run_path / 'report.html'}" in out
    assert (run_path / "report.html").is_file() and (run_path / "advice.json").is_file()


def test_relative_data_path_resolves_from_the_runs_working_directory(tmp_path: Path) -> None:
    run_path = make_run(tmp_path, "rel", stages=False)
    config = json.loads((run_path / "config.json").read_text())
    (run_path / "config.json").write_text(json.dumps({**config, "data": "rel-data"}))
    (run_path / "process.json").write_text(json.dumps({"command": ["transferlab"], "cwd": str(tmp_path)}))
    html = write_report(run_path).read_text()
    gallery = html.split('id="worst"')[1]
    assert gallery.count('<img alt="img_') == 4
