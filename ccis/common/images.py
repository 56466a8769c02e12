"""Image encoding shared by the stages that write PNGs."""

from __future__ import annotations

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
