"""Safe loading: weights never run code when loaded, and user strings never become HTML in the report."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from conftest import make_class_folder
from corpus import text_named_png, tiny_backbone_args

from transferlab.cli import main


class _Payload:
    """Unpickling this runs ``touch <marker>``: what a hostile .pth shared online does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return make_class_folder(tmp_path / "data", per_class=4)


def _run_error(capsys: pytest.CaptureFixture, data: Path, weights: Path, tmp_path: Path) -> str:
    code = main(["run", str(data), *tiny_backbone_args(weights, tmp_path / "cache", tmp_path / "runs")])
    captured = capsys.readouterr()
    assert code == 2, captured.err
    assert captured.err.startswith("error: ") and "Traceback" not in captured.err
    return captured.err


def test_malicious_pickle_weights_are_refused_and_never_run(data: Path, tmp_path: Path, capsys) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    torch.save({"state_dict": {"conv_stem.weight": _Payload(marker)}}, evil)
    message = _run_error(capsys, data, evil, tmp_path)
    assert "refused to load" in message and "evil.pth" in message
    assert not marker.exists()
    assert not (tmp_path / "cache").exists()  # refused before any feature is extracted


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_garbage_weights_files_are_a_clear_error(data: Path, tmp_path: Path, capsys, suffix: str) -> None:
    garbage = tmp_path / f"garbage{suffix}"
    garbage.write_bytes(b"\x00\x01 definitely not tensors" * 10)
    assert str(garbage) in _run_error(capsys, data, garbage, tmp_path)


def test_report_escapes_class_and_file_names(tmp_path: Path, tiny_weights: Path, capsys) -> None:
    hostile = "<img src=x onerror=alert(1)>"
    data = make_class_folder(tmp_path / "data", per_class=6, classes=("plain", hostile))
    text_named_png(data / "plain" / "<b>broken<.png")
    code = main(["run", str(data), *tiny_backbone_args(tiny_weights, tmp_path / "cache", tmp_path / "runs")])
    assert code == 0, capsys.readouterr().err
    html = (tmp_path / "runs" / "run" / "report.html").read_text(encoding="utf-8")
    assert "<img src=x" not in html and "<b>broken" not in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html
    assert "&lt;b&gt;broken&lt;.png" in html
