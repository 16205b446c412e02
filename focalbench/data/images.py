"""Decoding images from whatever a Hugging Face data set row holds, with errors that name the file."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from focalbench.errors import FocalbenchError


class ImageDecodeError(FocalbenchError, ValueError):
    """An image (or mask) that cannot be read; the message names the file or row."""


def describe_source(value: Any, row: int | None = None) -> str:
    """A human name for an image cell: its path when known, else its row."""
    if isinstance(value, dict) and value.get("path"):
        return str(value["path"])
    if isinstance(value, (str, Path)):
        return str(value)
    return f"row {row}" if row is not None else "an in-memory image"


def open_image(value: Any, row: int | None = None) -> Image.Image:
    """A PIL image from a path, a ``{"path", "bytes"}`` cell (``datasets.Image(decode=False)``) or a PIL image."""
    try:
        if isinstance(value, Image.Image):
            image = value
        elif isinstance(value, dict):
            data = value.get("bytes")
            image = Image.open(io.BytesIO(data)) if data is not None else Image.open(value["path"])
        else:
            image = Image.open(value)
        image.load()
    except (OSError, UnidentifiedImageError, KeyError, TypeError, ValueError) as err:
        raise ImageDecodeError(f"cannot read image {describe_source(value, row)}: {err}") from err
    return ImageOps.exif_transpose(image)


def to_rgb_array(image: Image.Image) -> np.ndarray:
    """HxWx3 uint8 from grayscale, palette, RGBA (alpha dropped) or 16-bit images."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        peak = array.max() or 1.0
        image = Image.fromarray((array * (255.0 / max(peak, 255.0))).astype(np.uint8))
    return np.asarray(image.convert("RGB"))


def read_rgb(value: Any, row: int | None = None) -> np.ndarray:
    """Decode one image cell to an RGB uint8 array, naming the file if it fails."""
    return to_rgb_array(open_image(value, row))
