"""``transferlab runs``, ``compare`` and ``rerun``, through the CLI as a user calls them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_with
from runfactory import make_run

from transferlab.cli import main
from transferlab.record.rundir import process_facts


def test_runs_lists_each_run_with_its_final_metric(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_run(tmp_path, "probe-only", stages=False, test_accuracy=0.75)
    make_run(tmp_path, "full")
    (make_run(tmp_path, "corrupt", stages=False) / "metrics.json").write_text("{truncated")
    assert main(["runs", "--runs-dir", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["name", "date", "(UTC)"]
    assert lines[-1].startswith("skipped ") and "corrupt" in lines[-1] and "not valid JSON" in lines[-1]
    rows = {line.split()[0]: line for line in lines[2:-1]}
    assert set(rows) == {"probe-only", "full"}
    assert "accuracy 0.7500 (probe)" in rows["probe-only"]
    assert "accuracy 0.8600 (fine-tuning)" in rows["full"]  # fine-tuning beats search and probe as final model
    assert "test_efficientnet" in rows["full"] and "5.5" in rows["full"]


def test_runs_on_missing_directory_is_a_clean_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["runs", "--runs-dir", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_compare_shows_config_and_result_differences(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_run(tmp_path, "a", stages=False, test_accuracy=0.75)
    b = make_run(tmp_path, "b", stages=False, test_accuracy=0.80)
    config = json.loads((b / "config.json").read_text())
    (b / "config.json").write_text(
        json.dumps({**config, "seed": 3, "data": config["data"].replace("b-data", "a-data")})
    )
    assert main(["compare", "a", "b", "--runs-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    config_part, results_part = out.split("\n\nresults\n")
    assert "seed" in config_part and "data" not in config_part  # only what differs
    test_accuracy = next(line for line in results_part.splitlines() if line.startswith("probe.test.accuracy "))
    assert test_accuracy.split()[1:] == ["0.7500", "0.8000", "+0.0500"]
    assert "probe.train.accuracy" not in results_part


def test_compare_unknown_run_is_a_clean_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_run(tmp_path, "a", stages=False)
    assert main(["compare", "a", "ghost", "--runs-dir", str(tmp_path)]) == 2
    assert "no run 'ghost'" in capsys.readouterr().err


def test_process_facts_record_command_and_peak_memory() -> None:
    facts = process_facts()
    assert isinstance(facts["command"], list) and facts["command"]
    assert 10 < facts["peak_memory_mb"] < 1e6  # a Python process with torch loaded: tens of MB at least


def test_rerun_reproduces_and_detects_mismatch(
    class_folder: Path, tiny_run_options: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    runs_dir = Path(tiny_run_options["runs_dir"])
    run_with(class_folder, name="orig", **tiny_run_options)
    capsys.readouterr()
    cache = ["--cache-dir", tiny_run_options["cache_dir"], "--runs-dir", str(runs_dir), "--no-progress"]
    assert main(["rerun", "orig", "--name", "again", *cache]) == 0
    out = capsys.readouterr().out
    assert "metrics match the original run orig" in out
    assert json.loads((runs_dir / "again" / "config.json").read_text()) == json.loads(
        (runs_dir / "orig" / "config.json").read_text()
    )
    # Tamper with the recorded result: the rerun must notice and exit 1.
    metrics_file = runs_dir / "orig" / "metrics.json"
    metrics = json.loads(metrics_file.read_text())
    metrics["test"]["accuracy"] -= 0.25
    metrics_file.write_text(json.dumps(metrics))
    with pytest.raises(SystemExit) as stopped:
        main(["rerun", str(runs_dir / "orig"), "--name", "third", *cache])
    assert stopped.value.code == 1
    out = capsys.readouterr().out
    assert "metrics DIFFER" in out and "probe.test.accuracy" in out


def test_every_command_writes_a_run_directory_that_runs_and_report_read(
    class_folder: Path, tiny_run_options: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    """``search``, ``finetune`` and ``rank`` outputs are run directories too (config.json, environment.json)."""
    from test_run import _cli

    runs_dir = Path(tiny_run_options["runs_dir"])
    assert main(_cli(tiny_run_options, "search", str(class_folder), "--trials", "2", "--name", "s")) == 0
    finetune = ["finetune", str(class_folder), "--epochs", "1", "--head-epochs", "0", "--unfreeze", "top:1"]
    assert main(_cli(tiny_run_options, *finetune, "--name", "f")) == 0
    for name in ("s", "f"):
        config = json.loads((runs_dir / name / "config.json").read_text())
        assert config["data"] == str(class_folder) and (runs_dir / name / "environment.json").is_file()
        assert main(["report", str(runs_dir / name)]) == 0
    assert json.loads((runs_dir / "s" / "config.json").read_text())["trials"] == 2
    assert json.loads((runs_dir / "f" / "config.json").read_text())["finetune"]["epochs"] == 1
    capsys.readouterr()
    assert main(["runs", "--runs-dir", str(runs_dir)]) == 0
    listed = {line.split()[0] for line in capsys.readouterr().out.splitlines()[2:]}
    assert {"s", "f"} <= listed
