"""Decode any image a user's folder may hold into the RGB picture a pretrained backbone expects.

Real folders mix phone photos (EXIF-rotated), scans (CMYK), exports with alpha, palettes and 16-bit medical
greyscale. Each is converted explicitly rather than trusting ``convert("RGB")``, which e.g. clips 16-bit data to
white. Pillow's decompression-bomb limit stays in force; failures become :class:`ImageLoadError` with a reason a
person can act on.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".jfif"}
)


class ImageLoadError(Exception):
    """An image file that cannot be used, with the reason (not found, not an image, truncated, too large...)."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


def is_image_name(name: str) -> bool:
    """Whether a file name carries an image extension (content is checked only when decoding)."""
    return Path(name).suffix.lower() in IMAGE_EXTENSIONS


def _high_bit_depth_to_l(image: Image.Image) -> Image.Image:
    """Scale 16/32-bit integer or float greyscale to 8 bits using its actual range, not by clipping."""
    array = np.asarray(image, dtype=np.float64)
    if image.mode.startswith("I;16") or (image.mode == "I" and 255 < array.max() <= 65535):
        array = array / 257.0
    elif array.max() > 255 or array.min() < 0:
        low, high = float(array.min()), float(array.max())
        array = (array - low) / max(high - low, 1e-12) * 255.0
    return Image.fromarray(np.clip(np.rint(array), 0, 255).astype(np.uint8), mode="L")


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in {"RGBA", "LA", "PA", "La", "RGBa"} or (image.mode == "P" and "transparency" in image.info)


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to RGB; transparent pixels are composited on white, as viewers show them."""
    if image.mode == "RGB":
        return image
    if image.mode.startswith("I") or image.mode == "F":
        return _high_bit_depth_to_l(image).convert("RGB")
    if _has_alpha(image):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def load_image(path: str | Path) -> Image.Image:
    """Open, fully decode, apply EXIF orientation and convert to RGB, or raise :class:`ImageLoadError`."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as opened:
                opened.load()
                image = ImageOps.exif_transpose(opened)
                image = to_rgb(image)
                image.load()
                return image
    except FileNotFoundError:
        raise ImageLoadError(path, "file not found") from None
    except PermissionError:
        raise ImageLoadError(path, "permission denied") from None
    except IsADirectoryError:
        raise ImageLoadError(path, "is a directory") from None
    except UnidentifiedImageError:
        reason = "empty file (0 bytes)" if Path(path).stat().st_size == 0 else "not an image (format not recognised)"
        raise ImageLoadError(path, reason) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageLoadError(path, f"too large, refused as a possible decompression bomb ({error})") from None
    except OSError as error:
        if error.errno is not None:  # the file system refused (symlink loop, I/O error...); Pillow's own have none
            raise ImageLoadError(path, f"unreadable ({error.strerror})") from None
        raise ImageLoadError(path, f"corrupt or truncated ({error})") from None
    except (SyntaxError, ValueError, EOFError) as error:
        raise ImageLoadError(path, f"corrupt or truncated ({error})") from None
