"""Image reading and PNG encoding shared by the stages."""

from __future__ import annotations

import os

import cv2
import numpy as np


def encode_png(array: np.ndarray) -> bytes:
    """PNG bytes of an RGB (H×W×3) or single-channel (H×W) uint8 array, deterministic."""
    if array.ndim == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", array, [cv2.IMWRITE_PNG_COMPRESSION, 3])
    if not ok:  # pragma: no cover - OpenCV only fails here on invalid arrays
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def resize_antialiased(array: np.ndarray, size: int) -> np.ndarray:
    """A uint8 image (H×W×3) or mask (H×W) resized to ``size``×``size`` with PIL's bilinear
    filter, which widens its kernel when shrinking (antialiasing), as the segmenters'
    reference loaders (torchvision ``Resize`` on PIL images) do."""
    from PIL import Image

    resized = Image.fromarray(array).resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(resized)


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """An image file as RGB uint8, or a ValueError naming the file."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"{path}: missing or unreadable image")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_gray(path: str | os.PathLike) -> np.ndarray:
    """A single-channel uint8 file (a mask) as stored, or a ValueError naming the file."""
    mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        raise ValueError(f"{path}: missing or unreadable mask")
    return mask
