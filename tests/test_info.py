"""``transferlab info`` inspects images in worker processes; the report must not depend on how they were split."""

from __future__ import annotations

import shutil
from pathlib import Path
from unittest import mock

from conftest import make_class_folder
from PIL import Image

from transferlab import info


def _folder_with_problems(root: Path) -> Path:
    data = make_class_folder(root, per_class=9, size=8)
    (data / "red" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    shutil.copy(data / "green" / "green_000.png", data / "blue" / "copied.png")
    Image.new("RGBA", (12, 10)).save(data / "blue" / "alpha.png")
    return data


def test_parallel_inspection_reports_exactly_what_one_process_does(tmp_path: Path) -> None:
    data = _folder_with_problems(tmp_path / "data")
    with mock.patch.object(info.os, "cpu_count", return_value=1):
        serial = info.dataset_info(data)
    with mock.patch.object(info, "CHUNK", 4), mock.patch.object(info.os, "cpu_count", return_value=2):
        parallel = info.dataset_info(data)  # 30 images in 8 chunks over 2 worker processes
    assert parallel == serial
    assert serial.sizes == {(8, 8): 28, (12, 10): 1} and serial.modes == {"RGB": 28, "RGBA": 1}
    assert [p.where for p in serial.problems] == ["red/broken.png"]
    assert sorted(serial.duplicates[0]) == ["blue/copied.png", "green/green_000.png"]
