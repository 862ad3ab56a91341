"""Every Pillow mode a user's folder may hold becomes the right RGB picture."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from transferlab.data.images import ImageLoadError, load_image


def _save(tmp_path: Path, image: Image.Image, name: str, **kwargs) -> Path:
    path = tmp_path / name
    image.save(path, **kwargs)
    return path


def test_rgba_transparent_pixels_become_white(tmp_path: Path) -> None:
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    rgba.putpixel((0, 0), (0, 0, 255, 255))
    loaded = load_image(_save(tmp_path, rgba, "a.png"))
    assert loaded.mode == "RGB"
    assert loaded.getpixel((1, 1)) == (255, 255, 255)
    assert loaded.getpixel((0, 0)) == (0, 0, 255)


def test_sixteen_bit_greyscale_is_scaled_not_clipped(tmp_path: Path) -> None:
    array = np.array([[0, 16384], [32768, 65535]], dtype=np.uint16)
    loaded = np.asarray(load_image(_save(tmp_path, Image.fromarray(array), "g16.png")))
    assert loaded[..., 0].tolist() == [[0, 64], [128, 255]]


def test_cmyk_jpeg_palette_and_la_convert(tmp_path: Path) -> None:
    cmyk = _save(tmp_path, Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "c.jpg")
    red = load_image(cmyk).getpixel((4, 4))
    assert red[0] > 200 and red[1] < 60 and red[2] < 60
    palette = Image.new("P", (4, 4), 0)
    palette.putpalette([0, 128, 0] * 256)
    assert load_image(_save(tmp_path, palette, "p.png")).getpixel((0, 0)) == (0, 128, 0)
    assert load_image(_save(tmp_path, Image.new("LA", (4, 4), (10, 255)), "la.png")).getpixel((0, 0)) == (10, 10, 10)


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    wide = Image.new("RGB", (40, 20), (0, 0, 0))
    exif = wide.getexif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    loaded = load_image(_save(tmp_path, wide, "phone.jpg", exif=exif))
    assert loaded.size == (20, 40)


@pytest.mark.parametrize(
    ("content", "reason"),
    [(b"", "empty"), (b"hello, I am text", "not an image")],
)
def test_non_images_get_a_reason(tmp_path: Path, content: bytes, reason: str) -> None:
    path = tmp_path / "x.jpg"
    path.write_bytes(content)
    with pytest.raises(ImageLoadError, match=reason):
        load_image(path)


def test_truncated_jpeg_is_refused(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buffer, "JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(ImageLoadError, match="truncated"):
        load_image(path)


def test_decompression_bomb_limit_is_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _save(tmp_path, Image.new("L", (100, 100)), "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ImageLoadError, match="pixel"):
        load_image(path)
