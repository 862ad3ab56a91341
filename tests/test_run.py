"""``transferlab run`` end to end on the tiny backbone: run directory, determinism, CLI, bad files named."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import run_with
from PIL import Image

from transferlab.cli import main
from transferlab.model import load_run_model

RUN_FILES = {
    "config.json",
    "environment.json",
    "record.json",
    "metrics.json",
    "timings.json",
    "split.csv",
    "problems.txt",
    "probe.safetensors",
    "probe.json",
    "predictions.csv",
    "report.html",
}


def test_run_writes_a_complete_reproducible_record(class_folder: Path, tiny_run_options: dict) -> None:
    first = run_with(class_folder, name="a", seed=5, **tiny_run_options)
    assert {p.name for p in first.run_dir.iterdir()} >= RUN_FILES
    config = json.loads((first.run_dir / "config.json").read_text())
    assert config["seed"] == 5 and config["backbone"] == "test_efficientnet"
    environment = json.loads((first.run_dir / "environment.json").read_text())
    assert environment["python"] and {"torch", "timm", "scikit-learn"} <= set(environment["packages"])
    assert first.metrics["test"]["accuracy"] > 0.6
    # every image computed once, at the precision it is used at (held-out rows only in fp32)
    held_out = first.extraction["held_out_fp32"] or {"computed": 0, "images": 0}
    assert first.extraction["computed"] + held_out["computed"] == 36
    assert held_out["images"] in (0, held_out["computed"])

    second = run_with(class_folder, name="b", seed=5, **tiny_run_options)
    assert second.extraction["computed"] == 0 and (second.extraction["held_out_fp32"] or {}).get("computed", 0) == 0
    assert second.extraction["cached"] == 36 - held_out["images"]
    assert (first.run_dir / "split.csv").read_text() == (second.run_dir / "split.csv").read_text()
    assert first.record["split_digest"] == second.record["split_digest"]
    assert first.metrics == second.metrics

    other_seed = run_with(class_folder, name="c", seed=6, **tiny_run_options)
    assert other_seed.record["split_digest"] != first.record["split_digest"]


def test_predictions_cover_val_and_test(class_folder: Path, tiny_run_options: dict) -> None:
    result = run_with(class_folder, name="p", **tiny_run_options)
    with open(result.run_dir / "predictions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {row["split"] for row in rows} == {"val", "test"}
    assert len(rows) == result.metrics["val"]["n"] + result.metrics["test"]["n"]
    correct = np.mean([row["true"] == row["predicted"] for row in rows if row["split"] == "test"])
    assert correct == pytest.approx(result.metrics["test"]["accuracy"])


def test_multilabel_run_on_the_demo_mosaics_scores_map(tiny_run_options: dict) -> None:
    from conftest import DEMO_MULTILABEL

    result = run_with(DEMO_MULTILABEL, name="ml", subset=0.5, **tiny_run_options)
    assert result.record["task"] == "multi-label"
    assert 0 < result.metrics["test"]["mAP"] <= 1
    assert len(json.loads((result.run_dir / "record.json").read_text())["probe"]["thresholds"]) == 10


def _cli(tiny_run_options: dict, *args: str) -> list[str]:
    options = [
        "--backbone",
        tiny_run_options["backbone"],
        "--weights",
        tiny_run_options["weights"],
        "--image-size",
        str(tiny_run_options["image_size"]),
        "--cache-dir",
        tiny_run_options["cache_dir"],
        "--runs-dir",
        tiny_run_options["runs_dir"],
        "--workers",
        "0",
        "--no-progress",
    ]
    return [*args, *options]


def _bad_files(folder: Path) -> None:
    """The issue's acceptance folder: a truncated JPEG, a CMYK JPEG, an RGBA PNG and a text file named .jpg."""
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(buffer, "JPEG")
    (folder / "red" / "truncated.jpg").write_bytes(buffer.getvalue()[:300])
    Image.new("CMYK", (24, 24), (0, 255, 255, 0)).save(folder / "red" / "cmyk.jpg")
    Image.new("RGBA", (24, 24), (0, 0, 255, 128)).save(folder / "blue" / "alpha.png")
    (folder / "green" / "notes.jpg").write_text("this is a text file")


def test_cli_run_skips_bad_files_by_name_and_finishes(
    class_folder: Path, tiny_run_options: dict, capsys: pytest.CaptureFixture
) -> None:
    _bad_files(class_folder)
    assert main(_cli(tiny_run_options, "run", str(class_folder), "--name", "bad")) == 0
    out = capsys.readouterr().out
    assert "skipped red/truncated.jpg: corrupt or truncated" in out
    assert "skipped green/notes.jpg: not an image" in out
    assert "2 input(s) skipped" in out
    assert "cmyk.jpg" not in out and "alpha.png" not in out  # decodable modes are converted, not skipped
    assert "accuracy" in out and "report:" in out
    split = (Path(tiny_run_options["runs_dir"]) / "bad" / "split.csv").read_text()
    assert "red/cmyk.jpg" in split and "blue/alpha.png" in split and "notes.jpg" not in split


def test_cli_user_mistakes_are_one_line_errors(class_folder: Path, tiny_run_options: dict, capsys) -> None:
    assert main(_cli(tiny_run_options, "run", str(class_folder / "nowhere"))) == 2
    assert capsys.readouterr().err.startswith("error: ")
    assert main(["run", str(class_folder), "--backbone", "no_such_net"]) == 2
    assert "unknown backbone" in capsys.readouterr().err


def test_cli_probe_info_and_backbones(class_folder: Path, tiny_run_options: dict, capsys) -> None:
    assert main(_cli(tiny_run_options, "probe", str(class_folder), "--cut-point", "blocks.2", "--name", "pr")) == 0
    assert "test" in capsys.readouterr().out
    record = json.loads((Path(tiny_run_options["runs_dir"]) / "pr" / "record.json").read_text())
    assert record["probe"]["cut_point"] == "blocks.2"
    assert main(["info", str(class_folder)]) == 0
    info = capsys.readouterr().out
    assert "red" in info and "12" in info
    assert main(["backbones"]) == 0
    assert "tf_efficientnet_lite0" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["run", "probe", "info", "backbones"])
def test_every_command_has_help(command: str, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert len(capsys.readouterr().out) > 200


def test_run_with_backbones_ranks_first_and_continues_with_the_choice(
    class_folder: Path, tiny_run_options: dict, capsys
) -> None:
    assert (
        main(
            _cli(
                tiny_run_options,
                "run",
                str(class_folder),
                "--name",
                "ranked",
                "--backbones",
                "test_efficientnet,resnet18",
            )
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "resnet18: unavailable" in out
    run_dir = Path(tiny_run_options["runs_dir"]) / "ranked"
    ranking = json.loads((run_dir / "ranking.json").read_text())
    record = json.loads((run_dir / "record.json").read_text())
    assert record["probe"]["cut_point"] == ranking["chosen"]["cut_point"]
    assert ranking["chosen"]["backbone"] == "test_efficientnet" and ranking["chosen"]["reason"]


def test_run_all_stages_records_each_and_predicts_with_the_final_model(
    class_folder: Path, tiny_run_options: dict, capsys
) -> None:
    args = _cli(
        tiny_run_options,
        "run",
        str(class_folder),
        "--name",
        "full",
        "--trials",
        "3",
        "--fractions",
        "0.5,1",
        "--finetune",
        "--epochs",
        "1",
        "--head-epochs",
        "1",
        "--unfreeze",
        "top:1",
        "--finetune-image-size",
        "32",
    )
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "test split by stage:" in out and "fine-tune" in out and "head search" in out
    run_dir = Path(tiny_run_options["runs_dir"]) / "full"
    for name in ("search.json", "fractions.json", "finetune.json", "finetuned.safetensors", "advice.json"):
        assert (run_dir / name).is_file(), name
    config = json.loads((run_dir / "config.json").read_text())
    assert config["trials"] == 3 and config["finetune"]["unfreeze"] == "top:1"
    finetune = json.loads((run_dir / "finetune.json").read_text())
    with open(run_dir / "predictions.csv", newline="") as handle:
        test_rows = [row for row in csv.DictReader(handle) if row["split"] == "test"]
    accuracy = np.mean([row["true"] == row["predicted"] for row in test_rows])
    # one epoch at 32 px loses to the probe on validation, so the probe stays the deployed model
    deployed = json.loads((run_dir / "deployed.json").read_text())
    assert deployed["stage"] == "probe" and deployed["finetune_val"] < deployed["probe_val"]
    assert deployed["trained_on"].startswith("train + val")
    assert "deployed: probe (fine-tuning did not beat the probe on validation" in out
    probe_test = json.loads((run_dir / "metrics.json").read_text())["test"]["accuracy"]
    assert accuracy == pytest.approx(probe_test) and accuracy != pytest.approx(finetune["test_metrics"]["accuracy"])
    assert load_run_model(run_dir).kind == "probe"
    advice = json.loads((run_dir / "advice.json").read_text())
    assert "fine_tuning_did_not_pay" in {item["id"] for item in advice}
    assert "Fine-tuning" in (run_dir / "report.html").read_text()
