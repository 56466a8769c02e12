"""Measure a polyp's attributes from the pixels of an image and its mask (OpenCV).

Captions are grounded in these measurements: a captioner may phrase them, never invent
them. Every measurement works on any image size: lengths are taken relative to the
frame or to the polyp, areas as fractions.

Categories match the phantom generator's (``ccis.data.phantom``), so measurement
accuracy can be checked exactly on phantom data; thresholds were calibrated there, then
two rules were added for real Kvasir-SEG frames (checked against labels given by eye in
``docs/real_labels.csv``, see ``benchmarks/caption_bench.py``) that change no phantom
answer: colour is also judged against the surrounding mucosa, and close-ups are raised.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import cv2
import numpy as np

from ccis.data.phantom import location_name, size_name

# Components smaller than this fraction of the frame are annotation specks, not polyps.
MIN_POLYP_FRACTION = 0.001


@dataclass(frozen=True)
class Attributes:
    """Measured attributes of one image–mask pair."""

    colour: str  # pale | pink | red | none
    size: str  # small | medium | large | none
    shape: str  # round | oval | irregular | lobulated | none
    texture: str  # smooth | rough | none
    swelling: str  # flat | slight | moderate | significant | none
    location: str  # 3×3 grid cell name, or "none"
    n_polyps: int
    area_fraction: float
    touches_border: bool
    mucosa: str  # pink | red | orange | pale | dark
    debris: bool
    highlights: bool
    folds: bool
    # The raw measurements behind the categories, for analysis and re-thresholding.
    chroma_gr: float
    chroma_br: float
    circularity: float
    solidity: float
    aspect: float
    roughness: float
    relief: float
    debris_fraction: float
    highlight_fraction: float
    fold_density: float
    # Green/red chromaticity of the mucosa (the reference for "redder than the mucosa");
    # defaulted so attributes stored before it was measured still load.
    mucosa_chroma_gr: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def _field_of_view(hsv: np.ndarray) -> np.ndarray:
    """The endoscope's lit field: the largest region that is not near-black.

    Found at half resolution (the field's outline is smooth) to keep measurement fast.
    """
    h, w = hsv.shape[:2]
    small = cv2.resize(hsv[..., 2], (max(1, w // 2), max(1, h // 2)), interpolation=cv2.INTER_AREA)
    lit = (small > 24).astype(np.uint8)
    lit = cv2.morphologyEx(lit, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    n, labels, stats, _ = cv2.connectedComponentsWithStats(lit, connectivity=8)
    if n <= 1:
        return np.ones((h, w), bool)
    biggest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    fov = (labels == biggest).astype(np.uint8)
    return cv2.resize(fov, (w, h), interpolation=cv2.INTER_NEAREST).astype(bool)


def _components(mask: np.ndarray, min_area: float) -> tuple[np.ndarray, list[int], np.ndarray]:
    """Label map, labels of polyp-sized components (largest first), and their stats."""
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    keep = [i for i in range(1, n) if stats[i, cv2.CC_STAT_AREA] >= min_area]
    if not keep and n > 1:
        # Only small blobs: the largest is still a (small) polyp, not "no polyp".
        keep = [1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))]
    keep.sort(key=lambda i: -stats[i, cv2.CC_STAT_AREA])
    return labels, keep, stats


def _shape(component: np.ndarray) -> tuple[str, float, float, float]:
    """Shape category and (circularity, solidity, minor/major axis ratio) of one blob."""
    contours, _ = cv2.findContours(component, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    contour = max(contours, key=cv2.contourArea)
    area = float(cv2.contourArea(contour))
    perimeter = float(cv2.arcLength(contour, True))
    hull = cv2.convexHull(contour)
    hull_area = float(cv2.contourArea(hull))
    if area < 4 or hull_area <= 0 or perimeter <= 0:
        return "round", 1.0, 1.0, 1.0
    # Circularity on the hull perimeter's scale: pixel staircases inflate raw perimeters.
    circularity = min(1.0, 4 * math.pi * area / perimeter**2)
    solidity = area / hull_area
    moments = cv2.moments(component, binaryImage=True)
    mu20, mu02, mu11 = moments["mu20"], moments["mu02"], moments["mu11"]
    spread = math.sqrt(max(0.0, (mu20 - mu02) ** 2 + 4 * mu11**2))
    major, minor = mu20 + mu02 + spread, mu20 + mu02 - spread
    aspect = math.sqrt(max(minor, 0.0) / major) if major > 0 else 1.0
    # Lobes show as several deep concavities of the outline relative to the polyp's size.
    eq_radius = math.sqrt(area / math.pi)
    deep = 0
    if len(contour) > 3:
        hull_idx = cv2.convexHull(contour, returnPoints=False)
        hull_idx = np.sort(hull_idx, axis=0)
        try:
            defects = cv2.convexityDefects(contour, hull_idx)
        except cv2.error:  # self-intersecting outlines of tiny blobs
            defects = None
        if defects is not None:
            deep = int((defects[:, 0, 3] / 256.0 > 0.12 * eq_radius).sum())
    if deep >= 3 or solidity < 0.87:
        name = "lobulated"
    elif solidity < 0.975 or deep >= 1:
        name = "irregular"
    elif aspect < 0.75:
        name = "oval"
    else:
        name = "round"
    return name, circularity, solidity, aspect


# Real descriptions are relative: a polyp clearly redder than the mucosa around it reads
# "red" even where both are orange-red. 0.06 below the mucosa's green/red ratio separates
# the real frames labelled red from the pink ones; phantom pink polyps never fall more than
# 0.045 below their mucosa (they are paler than it), so no phantom answer changes.
REDDER_THAN_MUCOSA = 0.06


def _colour_name(gr: float, mucosa_gr: float) -> str:
    """Polyp colour from its green/red chromaticity, absolute and against the mucosa's."""
    if gr < 0.36 or (mucosa_gr > 0 and gr < mucosa_gr - REDDER_THAN_MUCOSA):
        return "red"
    if gr > 0.62:
        return "pale"
    return "pink"


def _mucosa_name(gr: float, br: float, value: float) -> str:
    if value < 70:
        return "dark"
    if gr > 0.6:
        return "pale"
    if br < 0.3 and gr > 0.35:
        return "orange"
    if gr < 0.33:
        return "red"
    return "pink"


def measure_attributes(image: np.ndarray, mask: np.ndarray) -> Attributes:
    """Measure the attributes of an RGB uint8 ``image`` and its 0/255 (or 0/1) ``mask``."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be H×W×3 RGB, got shape {image.shape}")
    if mask.shape != image.shape[:2]:
        raise ValueError(f"mask shape {mask.shape} differs from image shape {image.shape[:2]}")
    h, w = mask.shape
    binary = (mask > 0).astype(np.uint8)
    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
    fov = _field_of_view(hsv)
    value, sat = hsv[..., 2], hsv[..., 1]
    # Specular highlights: bright and nearly colourless.
    glare = (value > 225) & (sat < 70) & fov
    labels, polyps, stats = _components(binary, MIN_POLYP_FRACTION * h * w)
    polyp = np.isin(labels, polyps) if polyps else np.zeros((h, w), bool)
    background = fov & ~cv2.dilate(binary, np.ones((7, 7), np.uint8)).astype(bool)

    usable = polyp & ~glare & (value > 30)

    def chroma(region: np.ndarray) -> tuple[float, float, float]:
        """Median (robust to glints and vessels) colour ratios and brightness of a region."""
        # Large regions are sampled on a 2×2 grid: the medians barely move, the cost halves.
        step = 2 if region.size > 65536 else 1
        sub = region[::step, ::step]
        if np.count_nonzero(sub) < 4:
            sub, step = region, 1
            if np.count_nonzero(sub) < 4:
                return 0.0, 0.0, 0.0
        pixels = image[::step, ::step][sub]
        r, g, b = (float(np.median(pixels[:, c])) for c in range(3))
        r = max(r, 1.0)
        return g / r, b / r, float(np.median(pixels.max(axis=1)))

    gr, br, _ = chroma(usable)
    mgr, mbr, mval = chroma(background & ~glare)
    mucosa = _mucosa_name(mgr, mbr, mval)

    # Debris: yellow-orange, saturated pixels on the wall (OpenCV hue is 0..179).
    hue = hsv[..., 0]
    yellow = (hue >= 17) & (hue <= 40) & (sat > 110) & (value > 90) & background
    debris_fraction = float(yellow.sum() / max(background.sum(), 1))
    highlight_fraction = float(glare.sum() / max(fov.sum(), 1))

    # Folds: long, oriented luminance ridges on the wall; measure edge density at a
    # scale relative to the frame so the answer does not depend on resolution.
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32)
    scale = max(h, w) / 352.0
    smooth = cv2.GaussianBlur(grey, (0, 0), 2.0 * scale)
    gx = cv2.Sobel(smooth, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(smooth, cv2.CV_32F, 0, 1, ksize=3)
    grad = np.sqrt(gx * gx + gy * gy) / (smooth + 10.0) * scale
    wall = background & (smooth > 60)
    fold_density = float((grad[wall] > 0.12).mean()) if wall.any() else 0.0

    if polyps:
        main = (labels == polyps[0]).astype(np.uint8)
        shape, circularity, solidity, aspect = _shape(main)
        ys, xs = np.nonzero(main)
        location = location_name(xs.mean() / w, ys.mean() / h)
        area = float(polyp.mean())
        size = size_name(area)
        eq_radius = math.sqrt(main.sum() / math.pi)
        core_px = max(1, int(0.15 * eq_radius))
        inner = cv2.erode(main, np.ones((2 * core_px + 1,) * 2, np.uint8)).astype(bool)
        inner &= ~cv2.dilate(glare.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
        # Texture: band-pass luminance inside the polyp, relative to the local brightness;
        # the median ignores glints and the odd vessel.
        fine = cv2.GaussianBlur(grey, (0, 0), 1.0 * scale) - cv2.GaussianBlur(
            grey, (0, 0), 3.0 * scale
        )
        local = cv2.GaussianBlur(grey, (0, 0), 3.0 * scale) + 5.0
        roughness = float(np.median(np.abs(fine[inner]) / local[inner])) if inner.any() else 0.0
        # Swelling: a dome is lit brighter at its top than at its rim (light at the scope).
        dist = cv2.distanceTransform(main, cv2.DIST_L2, 3)
        peak = float(dist.max())
        core = (dist > 0.6 * peak) & ~glare
        rim = (dist > 0) & (dist < 0.25 * peak) & ~glare
        if core.sum() >= 3 and rim.sum() >= 3:
            relief = float(np.median(grey[core]) / (np.median(grey[rim]) + 1.0) - 1.0)
        else:
            relief = 0.0
        texture = "rough" if roughness > 0.024 else "smooth"
        swelling = _swelling_name(relief, area)
        colour = _colour_name(gr, mgr)
    else:
        shape = size = texture = swelling = colour = location = "none"
        circularity = solidity = aspect = roughness = relief = 0.0
        area = float(binary.mean())
    touches = bool(binary[0].any() or binary[-1].any() or binary[:, 0].any() or binary[:, -1].any())
    return Attributes(
        colour=colour,
        size=size,
        shape=shape,
        texture=texture,
        swelling=swelling,
        location=location,
        n_polyps=len(polyps),
        area_fraction=area,
        touches_border=touches,
        mucosa=mucosa,
        debris=debris_fraction > 0.002,
        highlights=highlight_fraction > 0.001,
        folds=fold_density > 0.05,
        chroma_gr=gr,
        chroma_br=br,
        mucosa_chroma_gr=mgr,
        circularity=circularity,
        solidity=solidity,
        aspect=aspect,
        roughness=roughness,
        relief=relief,
        debris_fraction=debris_fraction,
        highlight_fraction=highlight_fraction,
        fold_density=fold_density,
    )


# Polyps covering more than this fraction of the frame are close-ups. Up close the scope's
# light floods the whole polyp, so its top is no brighter than its rim and the relief cue
# reads "flat" or "slight" for large bulging real polyps; a lesion that fills a quarter of
# the view is a raised one. Phantom polyps stay below 0.22, so their answers do not change.
CLOSE_UP_AREA = 0.24


def _swelling_name(relief: float, area: float = 0.0) -> str:
    """Swelling from the top-to-rim brightness ratio of the polyp (minus one) and its area."""
    if area > CLOSE_UP_AREA and relief < 0.12:
        return "moderate"
    if relief < 0.02:
        return "flat"
    if relief < 0.12:
        return "slight"
    if relief < 0.3:
        return "moderate"
    return "significant"
