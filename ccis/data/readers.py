"""Strict decoding of dataset images and masks into the normalised form.

Images become RGB uint8; masks become single-channel uint8 in {0, 255}. Everything that
is not plainly an image or a mask raises :class:`PairError` with the file and the reason;
conversions that are safe (JPEG noise in masks, 0/1 masks, 16-bit or RGBA files) are
applied and reported as notes so the prepare log can list them.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

# A decoded frame above this many pixels is refused before decoding: real colonoscopy
# frames are at most a few megapixels, and a forged header could ask for gigabytes.
DEFAULT_MAX_PIXELS = 40_000_000
MASK_THRESHOLD = 128
# Masks whose pixels are mostly neither dark nor bright are not masks at all.
MAX_GREY_FRACTION = 0.2
EXIF_ORIENTATION = 0x0112


class PairError(ValueError):
    """A file of an image–mask pair that cannot be used, with the reason."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


@dataclass
class Decoded:
    """A decoded array and the conversions applied to get it."""

    array: np.ndarray
    notes: list[str] = field(default_factory=list)


def _open_checked(path: Path, max_pixels: int) -> Image.Image:
    """Open ``path`` with Pillow, check its header, and fully decode it."""
    try:
        size = path.stat().st_size
    except OSError as err:
        raise PairError(path, f"cannot be read ({err.strerror})") from err
    if size == 0:
        raise PairError(path, "is an empty (zero-byte) file")
    try:
        with warnings.catch_warnings():
            # Pillow's own bomb check fires inside open(); we apply ours (configurable,
            # and naming the declared size) from the header instead.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
            try:
                img = Image.open(path)
            finally:
                Image.MAX_IMAGE_PIXELS = limit
            width, height = img.size
            if width * height > max_pixels:
                raise PairError(
                    path,
                    f"header declares {width}×{height} pixels, more than the limit of "
                    f"{max_pixels} (data.max_pixels); refusing to decode it",
                )
            img.load()  # decodes everything: truncated files fail here
    except PairError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise PairError(path, f"is not a readable image ({err})") from err
    return img


def _to_array(img: Image.Image) -> tuple[np.ndarray, list[str]]:
    """Pixel array of a decoded Pillow image, 16-bit modes scaled to 8-bit."""
    notes: list[str] = []
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        peak = float(arr.max()) if arr.size else 0.0
        if peak > 255:
            arr = arr / 257.0 if peak <= 65535 else arr * (255.0 / peak)
            notes.append(f"{img.mode} image scaled to 8 bits")
        return np.clip(np.round(arr), 0, 255).astype(np.uint8), notes
    return np.asarray(img), notes


def _orientation_notes(img: Image.Image) -> list[str]:
    """A note when the file carries an EXIF orientation other than "as stored" (1).

    Pixels are always read as stored, never rotated: the image and its mask must stay
    aligned, and the reference loaders (PIL, OpenCV's IMREAD_UNCHANGED) do not rotate
    either. A viewer that honours the tag shows the file turned.
    """
    try:
        orientation = img.getexif().get(EXIF_ORIENTATION)
    except Exception:  # noqa: BLE001 - a broken EXIF block is not worth refusing a frame
        return []
    if orientation in (None, 1):
        return []
    return [f"EXIF orientation {orientation} ignored: pixels read as stored"]


def read_image(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> Decoded:
    """Decode a colonoscopy frame as an RGB uint8 array (as stored; EXIF rotation noted)."""
    path = Path(path)
    img = _open_checked(path, max_pixels)
    notes: list[str] = _orientation_notes(img)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        notes.append(f"{img.mode} image: alpha channel dropped")
    if img.mode not in ("RGB", "L") and not img.mode.startswith("I"):
        img = img.convert("RGB")
    arr, more = _to_array(img)
    notes += more
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
        notes.append("greyscale image expanded to RGB")
    if arr.dtype != np.uint8:
        arr = arr.astype(np.uint8)
    return Decoded(np.ascontiguousarray(arr), notes)


def read_mask(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> Decoded:
    """Decode a segmentation mask as uint8 in {0, 255}.

    Handling, each reported in the notes:
    - colour masks (RGB, palette, or RGBA whose colour carries the mask) use the brightest
      channel; an RGBA mask with constant colour uses its alpha channel;
    - 16-bit masks are scaled by their peak to 8 bits; 0/1-valued masks to 0/255;
    - a mask with non-zero pixels that thresholding would empty is refused;
    - grey levels (JPEG noise, resampled edges) are thresholded at 128, as the
      reference evaluation code does; a mask that is mostly grey is refused.
    """
    path = Path(path)
    img = _open_checked(path, max_pixels)
    notes: list[str] = _orientation_notes(img)
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA"):
        arr = np.asarray(img)
        colour = arr[..., :-1].astype(np.float64).max(axis=2)
        alpha = arr[..., -1]
        if np.ptp(colour) == 0 and np.ptp(alpha) > 0:
            gray = alpha.astype(np.float64)
            notes.append(f"{img.mode} mask: taken from its alpha channel")
        else:
            gray = colour
            notes.append(f"{img.mode} mask: alpha channel dropped")
    elif img.mode in ("RGB", "YCbCr", "CMYK"):
        arr = np.asarray(img.convert("RGB")).astype(np.float64)
        if not (
            np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 1], arr[..., 2])
        ):
            notes.append("colour mask: brightest channel used")
        # The brightest channel: a pure red or palette-coloured mask keeps its polyp.
        gray = arr.max(axis=2)
    elif img.mode == "1":
        gray = np.asarray(img.convert("L")).astype(np.float64)
    elif img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # Masks with more than 8 bits: scale by their own peak, so 12-bit (0/4095) or
        # 16-bit (0/65535) masks both become 0/255.
        gray = np.asarray(img, dtype=np.float64)
        peak = float(gray.max()) if gray.size else 0.0
        if peak > 255:
            gray = gray * (255.0 / peak)
            notes.append(f"{img.mode} mask scaled by its peak ({peak:.0f}) to 8 bits")
    else:
        gray = np.asarray(img).astype(np.float64)
    if gray.size and gray.max() == 1:
        gray = gray * 255.0
        notes.append("0/1-valued mask scaled to 0/255")
    grey = (gray > 0) & (gray < 255)
    if grey.any():
        fraction = float(grey.mean())
        mid = float(((gray > 32) & (gray < 223)).mean())
        if mid > MAX_GREY_FRACTION:
            raise PairError(
                path,
                f"does not look like a binary mask: {mid:.0%} of its pixels are mid-grey",
            )
        notes.append(f"non-binary mask ({fraction:.2%} grey pixels) thresholded at 128")
    binary = np.where(gray >= MASK_THRESHOLD, 255, 0).astype(np.uint8)
    if gray.max() > 0 and not binary.any():
        raise PairError(
            path,
            f"mask has non-zero pixels but none reaches {MASK_THRESHOLD} (peak {gray.max():.0f}): "
            "thresholding would empty it",
        )
    return Decoded(binary, notes)
