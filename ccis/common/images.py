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


class UnreadableImageError(FileNotFoundError, ValueError):
    """An image or mask file is missing or cannot be decoded (bad input either way)."""


def _unreadable(path, what: str, listed_in) -> UnreadableImageError:
    where = f" (listed in {listed_in})" if listed_in else ""
    return UnreadableImageError(f"{path}: missing or unreadable {what}{where}")


def read_bgr(path: str | os.PathLike, listed_in: str | os.PathLike | None = None) -> np.ndarray:
    """An image file as OpenCV's BGR uint8; a missing or unreadable file raises an error
    naming it (and the manifest ``listed_in`` that lists it)."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise _unreadable(path, "image", listed_in)
    return image


def read_rgb(path: str | os.PathLike, listed_in: str | os.PathLike | None = None) -> np.ndarray:
    """An image file as RGB uint8 (errors as :func:`read_bgr`)."""
    return cv2.cvtColor(read_bgr(path, listed_in), cv2.COLOR_BGR2RGB)


def read_gray(path: str | os.PathLike, listed_in: str | os.PathLike | None = None) -> np.ndarray:
    """A single-channel uint8 file (a mask) as stored (errors as :func:`read_bgr`)."""
    mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        raise _unreadable(path, "mask", listed_in)
    return mask
