"""Procedural phantom colonoscopy frames with exact masks and known polyp attributes.

The frames are rendered from a height field lit by a light at the camera, the way an
endoscope sees the colon wall: a dark lumen where the tube recedes, haustral folds as
ridges around it, vessels and debris painted on the mucosa, wet specular highlights, and
one or two polyps whose colour, size, shape, texture, swelling and location are drawn
from known categories. Every frame depends only on ``(seed, centre, index)``, so a split
can be rendered in any order or in parallel and is byte-identical across runs.

"Centres" change the colour statistics, the field of view and the burned-in overlays,
standing in for the different hospitals behind the public test sets.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import cv2
import numpy as np

COLOURS = ("pale", "pink", "red")
SIZES = ("small", "medium", "large")
SHAPES = ("round", "oval", "irregular", "lobulated")
TEXTURES = ("smooth", "rough")
SWELLINGS = ("flat", "slight", "moderate", "significant")
LOCATIONS = (
    ("upper left", "upper centre", "upper right"),
    ("centre left", "centre", "centre right"),
    ("lower left", "lower centre", "lower right"),
)

# Polyp area fraction (of the whole frame) bounds per size category. Categories are
# separated by gaps so a measured area falls unambiguously into one of them.
SIZE_BOUNDS = {"small": (0.008, 0.03), "medium": (0.045, 0.09), "large": (0.13, 0.22)}
# Thresholds between the categories, used by measurement code as well.
SIZE_THRESHOLDS = (0.0375, 0.11)

# Linear-light albedo of the polyp surface per colour name.
POLYP_ALBEDO = {
    "pale": (0.92, 0.67, 0.62),
    "pink": (0.95, 0.50, 0.56),
    "red": (0.74, 0.15, 0.13),
}
SWELL_HEIGHT = {"flat": 0.12, "slight": 0.35, "moderate": 0.7, "significant": 1.15}


@dataclass(frozen=True)
class CentreStyle:
    """Acquisition look of one (imaginary) centre."""

    name: str
    mucosa: tuple[float, float, float]  # linear albedo of the colon wall
    exposure: float
    gamma: float
    fov: str  # "octagon", "circle" or "rounded"
    overlays: bool  # burned-in text and a corner box, as in Kvasir frames
    vessel_density: float
    noise: float


CENTRES: tuple[CentreStyle, ...] = (
    CentreStyle("centre0", (0.86, 0.38, 0.28), 1.05, 0.95, "octagon", True, 1.0, 0.012),
    CentreStyle("centre1", (0.84, 0.34, 0.18), 0.90, 1.00, "circle", False, 0.7, 0.018),
    CentreStyle("centre2", (0.80, 0.28, 0.26), 1.00, 0.90, "rounded", False, 1.3, 0.010),
    CentreStyle("centre3", (0.90, 0.46, 0.40), 1.15, 0.90, "octagon", True, 0.8, 0.014),
)


@dataclass(frozen=True)
class PhantomTruth:
    """Ground-truth attributes of one phantom pair (of its largest polyp)."""

    colour: str
    size: str
    shape: str
    texture: str
    swelling: str
    location: str
    n_polyps: int
    area_fraction: float
    debris: bool
    highlights: bool
    folds: bool
    centre: str

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class PhantomSample:
    """One rendered frame: RGB uint8 image, binary uint8 mask (0/255) and its truth."""

    image: np.ndarray
    mask: np.ndarray
    truth: PhantomTruth


def location_name(cx: float, cy: float) -> str:
    """Name the cell of a 3×3 grid holding the point (cx, cy), both in [0, 1]."""
    col = min(2, max(0, int(cx * 3)))
    row = min(2, max(0, int(cy * 3)))
    return LOCATIONS[row][col]


def size_name(area_fraction: float) -> str:
    """Name the size category of a polyp area fraction."""
    if area_fraction < SIZE_THRESHOLDS[0]:
        return "small"
    if area_fraction < SIZE_THRESHOLDS[1]:
        return "medium"
    return "large"


def _smooth_noise(rng: np.random.Generator, h: int, w: int, sigma: float) -> np.ndarray:
    """Gaussian-blurred white noise with unit standard deviation."""
    field = rng.standard_normal((h, w)).astype(np.float32)
    field = cv2.GaussianBlur(field, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
    return field / (field.std() + 1e-6)


def field_of_view(h: int, w: int, kind: str) -> np.ndarray:
    """Boolean mask of the endoscope's visible field."""
    fov = np.zeros((h, w), np.uint8)
    if kind == "circle":
        cv2.circle(fov, (w // 2, h // 2), int(0.53 * min(h, w) + 0.1 * abs(w - h)), 1, -1)
        fov[: int(0.02 * h)] = 0
        fov[h - int(0.02 * h) :] = 0
    elif kind == "rounded":
        m = int(0.03 * min(h, w))
        r = int(0.12 * min(h, w))
        cv2.rectangle(fov, (m + r, m), (w - 1 - m - r, h - 1 - m), 1, -1)
        cv2.rectangle(fov, (m, m + r), (w - 1 - m, h - 1 - m - r), 1, -1)
        for x, y in ((m + r, m + r), (w - 1 - m - r, m + r), (m + r, h - 1 - m - r)):
            cv2.circle(fov, (x, y), r, 1, -1)
        cv2.circle(fov, (w - 1 - m - r, h - 1 - m - r), r, 1, -1)
    else:  # octagon with cut corners, like Olympus frames in Kvasir
        c = int(0.14 * min(h, w))
        mx = int(0.035 * w)
        pts = np.array(
            [
                (mx + c, 0), (w - 1 - mx - c, 0), (w - 1 - mx, c), (w - 1 - mx, h - 1 - c),
                (w - 1 - mx - c, h - 1), (mx + c, h - 1), (mx, h - 1 - c), (mx, c),
            ],
            np.int32,
        )  # fmt: skip
        cv2.fillPoly(fov, [pts], 1)
    return fov.astype(bool)


def _polyp_outline(
    rng: np.random.Generator, shape: str, centre: tuple[float, float], radius: float
) -> np.ndarray:
    """Polygon (N×2 float) of a polyp outline of the given shape category."""
    theta = np.linspace(0.0, 2.0 * np.pi, 240, endpoint=False)
    r = np.ones_like(theta)
    aspect = 1.0
    if shape == "round":
        r += 0.03 * np.cos(2 * theta + rng.uniform(0, 2 * np.pi))
    elif shape == "oval":
        aspect = rng.uniform(0.5, 0.68)
        r += 0.03 * np.cos(3 * theta + rng.uniform(0, 2 * np.pi))
    elif shape == "irregular":
        aspect = rng.uniform(0.7, 0.95)
        for k in range(2, 7):
            r += (
                rng.uniform(0.06, 0.13)
                / math.sqrt(k - 1)
                * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
            )
    else:  # lobulated: a few distinct lobes
        lobes = int(rng.integers(3, 6))
        r += 0.24 * np.cos(lobes * theta + rng.uniform(0, 2 * np.pi))
        r += 0.05 * np.cos((lobes + 2) * theta + rng.uniform(0, 2 * np.pi))
    x = r * np.cos(theta)
    y = r * np.sin(theta) * aspect
    rot = rng.uniform(0, np.pi)
    xr = x * math.cos(rot) - y * math.sin(rot)
    yr = x * math.sin(rot) + y * math.cos(rot)
    return np.stack([centre[0] + radius * xr, centre[1] + radius * yr], axis=1)


def _fill(poly: np.ndarray, h: int, w: int) -> np.ndarray:
    """Rasterise a polygon with sub-pixel precision into a boolean mask."""
    out = np.zeros((h, w), np.uint8)
    cv2.fillPoly(out, [np.round(poly * 16).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=4)
    return out.astype(bool)


def _place_polyp(
    rng: np.random.Generator,
    shape: str,
    area: float,
    cell: tuple[int, int],
    allowed: np.ndarray,
    taken: np.ndarray,
) -> np.ndarray | None:
    """Find a polyp mask of ``area`` pixels centred near ``cell`` inside ``allowed``."""
    h, w = allowed.shape
    for _ in range(40):
        cx = (cell[1] + 0.5 + rng.uniform(-0.22, 0.22)) * w / 3
        cy = (cell[0] + 0.5 + rng.uniform(-0.22, 0.22)) * h / 3
        poly = _polyp_outline(rng, shape, (cx, cy), 1.0)
        # Scale the unit outline to the wanted area (shoelace area of the polygon).
        px, py = poly[:, 0] - cx, poly[:, 1] - cy
        unit_area = 0.5 * abs(np.dot(px, np.roll(py, 1)) - np.dot(py, np.roll(px, 1)))
        scale = math.sqrt(area / unit_area)
        poly = np.stack([cx + px * scale, cy + py * scale], axis=1)
        mask = _fill(poly, h, w)
        if mask.sum() == 0 or (mask & ~allowed).any() or (mask & taken).any():
            continue
        ys, xs = np.nonzero(mask)
        if location_name(xs.mean() / w, ys.mean() / h) != LOCATIONS[cell[0]][cell[1]]:
            continue
        return mask
    return None


def _dome(mask: np.ndarray, height: float) -> np.ndarray:
    """A smooth dome over ``mask`` whose top is ``height`` pixels above the wall."""
    dist = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, 5)
    # Smooth the distance map so irregular outlines give a rounded dome, not a pyramid.
    eq_radius = math.sqrt(mask.sum() / math.pi)
    dist = cv2.GaussianBlur(dist, (0, 0), 0.15 * eq_radius + 0.5) * mask
    peak = float(dist.max())
    if peak <= 0:
        return np.zeros(mask.shape, np.float32)
    u = dist / peak
    return (height * np.clip(u * (2.0 - u), 0.0, 1.0) ** 0.75).astype(np.float32)


def _vessels(rng: np.random.Generator, h: int, w: int, density: float) -> np.ndarray:
    """Thin branching vessel map in [0, 1], drawn as smoothed random walks."""
    canvas = np.zeros((h, w), np.float32)
    n = int(rng.poisson(16 * density)) + 2
    step = max(2.0, 0.012 * max(h, w))
    stack = [
        (rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0, 2 * np.pi), 1.0) for _ in range(n)
    ]
    while stack:
        x, y, ang, strength = stack.pop()
        pts = [(x, y)]
        for _ in range(int(rng.integers(15, 50))):
            ang += rng.normal(0.0, 0.35)
            x += step * math.cos(ang)
            y += step * math.sin(ang)
            pts.append((x, y))
            if strength > 0.4 and rng.random() < 0.04:
                stack.append(
                    (x, y, ang + rng.choice([-1, 1]) * rng.uniform(0.5, 1.2), strength * 0.6)
                )
        arr = np.round(np.array(pts) * 4).astype(np.int32)
        thick = 1
        cv2.polylines(canvas, [arr], False, float(strength), thick, cv2.LINE_AA, shift=2)
    return cv2.GaussianBlur(canvas, (0, 0), 0.7)


def _debris(rng: np.random.Generator, h: int, w: int, allowed: np.ndarray) -> np.ndarray:
    """Soft map in [0, 1] of a few yellowish debris flecks and smears."""
    canvas = np.zeros((h, w), np.float32)
    ys, xs = np.nonzero(allowed)
    for _ in range(int(rng.integers(2, 7))):
        i = int(rng.integers(len(xs)))
        cx, cy = float(xs[i]), float(ys[i])
        rad = rng.uniform(0.01, 0.045) * min(h, w)
        poly = _polyp_outline(rng, "irregular", (cx, cy), rad)
        canvas[_fill(poly, h, w)] = 1.0
        for _ in range(int(rng.integers(0, 6))):  # satellite specks
            sx = cx + rng.normal(0, 3 * rad)
            sy = cy + rng.normal(0, 3 * rad)
            cv2.circle(canvas, (int(sx), int(sy)), int(rng.integers(1, 4)), 1.0, -1)
    canvas = cv2.GaussianBlur(canvas, (0, 0), 1.2)
    return canvas * allowed


def _overlays(rng: np.random.Generator, img: np.ndarray, fov: np.ndarray) -> np.ndarray:
    """Burn in a text block and a scope-position box, as Kvasir's Olympus frames show.

    Returns the boolean area they cover, which polyps must avoid.
    """
    h, w = fov.shape
    covered = np.zeros((h, w), bool)
    scale = min(h, w) / 700.0
    day, month, hour, minute = (int(v) for v in rng.integers([1, 1, 8, 0], [28, 12, 18, 59]))
    lines = [f"{day:02d}/{month:02d}/2019", f"{hour:02d}:{minute:02d}:{int(rng.integers(60)):02d}"]
    y = int(0.05 * h) + 4
    for text in lines:
        cv2.putText(
            img, text, (int(0.012 * w), y), cv2.FONT_HERSHEY_SIMPLEX, scale,
            (235, 235, 235), 1, cv2.LINE_AA,
        )  # fmt: skip
        y += int(28 * scale) + 3
    if rng.random() < 0.6:
        bw, bh = int(0.24 * w), int(0.30 * h)
        y0 = h - bh
        img[y0:, :bw] = (4, 4, 4)
        covered[y0:, :bw] = True
        # A green scope shape: a curved thick line, as the position guide draws it.
        t = np.linspace(0, 1, 30)
        px = bw * (0.2 + 0.6 * t)
        py = y0 + bh * (0.8 - 0.55 * np.sin(np.pi * t * rng.uniform(0.6, 1.2)))
        pts = np.round(np.stack([px, py], 1) * 4).astype(np.int32)
        cv2.polylines(img, [pts], False, (40, 170, 60), max(2, int(6 * scale)), cv2.LINE_AA, 2)
    return covered


def render_phantom(
    seed: int, centre: int, index: int, width: int = 384, height: int = 320
) -> PhantomSample:
    """Render phantom frame ``index`` of ``centre`` for ``seed``.

    The result depends only on the arguments (not on call order).
    """
    if not 0 <= centre < len(CENTRES):
        raise ValueError(f"centre must be in [0, {len(CENTRES) - 1}], got {centre}")
    if width < 32 or height < 32:
        raise ValueError(f"phantom frames must be at least 32×32 pixels, got {width}×{height}")
    style = CENTRES[centre]
    rng = np.random.default_rng([seed, centre, index])
    h, w = height, width
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    diag = math.hypot(h, w)

    # Attributes first, so their distribution does not depend on rendering details.
    colour = str(rng.choice(COLOURS))
    size = str(rng.choice(SIZES))
    shape = str(rng.choice(SHAPES))
    texture = str(rng.choice(TEXTURES))
    swelling = str(rng.choice(SWELLINGS))
    cell = (int(rng.integers(3)), int(rng.integers(3)))
    has_debris = bool(rng.random() < 0.4)
    has_highlights = bool(rng.random() < 0.8)
    has_folds = bool(rng.random() < 0.75)
    two_polyps = bool(rng.random() < 0.15) and size != "large"

    fov = field_of_view(h, w, style.fov)
    frame = np.zeros((h, w, 3), np.uint8)
    covered = _overlays(rng, frame, fov) if style.overlays else np.zeros((h, w), bool)
    margin = cv2.erode(fov.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)
    allowed = margin & ~cv2.dilate(covered.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)

    # Polyps: the main one in the chosen grid cell, sometimes a smaller second one.
    lo, hi = SIZE_BOUNDS[size]
    target = rng.uniform(lo, hi) * h * w
    main = None
    while main is None:
        main = _place_polyp(rng, shape, target, cell, allowed, np.zeros_like(allowed))
        if main is None:  # cell unreachable at this size: try the centre, then shrink
            cell = (1, 1)
            target *= 0.85
            lo = min(lo, target / (h * w))
    polyps = [(main, shape)]
    if two_polyps:
        cells = [(r, c) for r in range(3) for c in range(3) if (r, c) != cell]
        other = cells[int(rng.integers(len(cells)))]
        small_area = rng.uniform(*SIZE_BOUNDS["small"]) * h * w * 0.6
        halo = cv2.dilate(main.astype(np.uint8), np.ones((15, 15), np.uint8)).astype(bool)
        second_shape = str(rng.choice(SHAPES))
        second = _place_polyp(rng, second_shape, small_area, other, allowed, halo)
        if second is not None:
            polyps.append((second, second_shape))
    mask = np.zeros((h, w), bool)
    for m, _ in polyps:
        mask |= m

    # Height field: folds around the lumen, gentle undulation, polyp domes.
    # The lumen lies away from the main polyp: polyps are seen on the near wall.
    ys, xs = np.nonzero(main)
    candidates = rng.uniform(0.2, 0.8, size=(12, 2)) * np.array([w, h])
    gaps = np.hypot(candidates[:, 0] - xs.mean(), candidates[:, 1] - ys.mean())
    far = candidates[gaps > 0.3 * diag]
    lx, ly = far[0] if len(far) else candidates[int(np.argmax(gaps))]
    dx, dy = xx - lx, yy - ly
    r = np.sqrt(dx * dx + dy * dy) / diag + 1e-3
    ang = np.arctan2(dy, dx)
    # The wall recedes toward the lumen: height ~ log(r) tilts the normals inward, which
    # darkens the far wall and confines glints to fold crests and polyp domes.
    tilt = rng.uniform(0.25, 0.4) * diag
    height_map = tilt * np.log(r + 0.02) + 2.0 * _smooth_noise(rng, h, w, 0.08 * diag)
    if has_folds:
        wobble = 0.9 * _smooth_noise(rng, h, w, 0.06 * diag)
        phase = np.log(r) * rng.uniform(5.0, 7.0) + wobble + rng.uniform(0, 2 * np.pi)
        arcs = 0.5 + 0.5 * np.cos(ang * int(rng.integers(1, 3)) + rng.uniform(0, 2 * np.pi))
        ridge = np.clip(np.sin(phase), 0, None) ** 3
        fold_amp = rng.uniform(0.02, 0.035) * diag
        ramp = np.clip((r - 0.04) / 0.2, 0, 1)
        ramp = ramp * ramp * (3 - 2 * ramp)  # smooth: a kink would draw a ring of glints
        height_map += fold_amp * ridge * (0.35 + 0.65 * arcs) * ramp
    polyp_height = np.zeros((h, w), np.float32)
    for m, _ in polyps:
        eq_radius = math.sqrt(m.sum() / math.pi)
        polyp_height += _dome(m, SWELL_HEIGHT[swelling] * eq_radius)
    polyp_height = cv2.GaussianBlur(polyp_height, (0, 0), 0.8)
    if texture == "rough":
        bumps = _smooth_noise(rng, h, w, 0.006 * diag + 0.6)
        polyp_height += (0.02 * math.sqrt(main.sum() / math.pi) + 0.4) * bumps * mask
    height_map += polyp_height

    # Shading: light at the camera, wall brightness falling toward the lumen.
    gy, gx = np.gradient(height_map)
    nz = 1.0 / np.sqrt(gx * gx + gy * gy + 1.0)
    nx, ny = -gx * nz, -gy * nz
    light = np.array([rng.uniform(-0.25, 0.25), rng.uniform(-0.25, 0.25), 1.0])
    light /= np.linalg.norm(light)
    lambert = np.clip(nx * light[0] + ny * light[1] + nz * light[2], 0.0, 1.0)
    blur_h = cv2.GaussianBlur(height_map, (0, 0), 0.03 * diag)
    occlusion = np.clip(1.0 - 0.025 * np.clip(blur_h - height_map, 0, None), 0.65, 1.0)
    lumen_r = rng.uniform(0.12, 0.2)
    falloff = 1.0 - np.exp(-((r / lumen_r) ** 2) * 1.6)
    falloff = 0.06 + 0.94 * falloff
    # Parts of the wall bulging toward the scope are closer, hence brighter.
    falloff = np.maximum(falloff, 0.8 * cv2.GaussianBlur(mask.astype(np.float32), (0, 0), 3.0))

    # Albedo: mucosa with tone variation, vessels, debris, polyp colour.
    base = np.array(style.mucosa, np.float32) * rng.uniform(0.92, 1.08, 3).astype(np.float32)
    tone = (
        1.0 + 0.07 * _smooth_noise(rng, h, w, 0.05 * diag) + 0.035 * _smooth_noise(rng, h, w, 1.2)
    )
    tone = tone[..., None]
    albedo = base[None, None, :] * tone
    vessels = _vessels(rng, h, w, style.vessel_density) * (1.0 - mask)
    vessel_tint = np.array([0.85, 0.5, 0.6], np.float32)
    albedo = albedo * (1.0 - 0.5 * vessels[..., None] * (1.0 - vessel_tint))
    if has_debris:
        debris = _debris(rng, h, w, margin & ~mask)
        dcol = np.array([0.92, 0.70, 0.22], np.float32) * rng.uniform(0.8, 1.05)
        albedo = albedo * (1 - debris[..., None]) + dcol * debris[..., None]
        height_map = height_map + 1.5 * debris
    pcol = np.array(POLYP_ALBEDO[colour], np.float32) * rng.uniform(0.95, 1.05, 3).astype(
        np.float32
    )
    mottle = 1.0 + (0.08 if texture == "rough" else 0.03) * _smooth_noise(rng, h, w, 1.5)
    # The polyp's colour fades into the mucosa over a few pixels, as on real sessile polyps.
    feather = 0.04 * math.sqrt(mask.sum() / math.pi) + 0.8
    soft = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), feather)[..., None]
    polyp_albedo = np.clip(pcol[None, None, :] * mottle[..., None], 0, 1)
    albedo = albedo * (1 - soft) + polyp_albedo * soft

    # Specular highlights on wet surfaces: glints sit on convex spots (fold crests, polyp
    # tops, debris) facing the scope, so use the wall's local relief without its tilt.
    if has_highlights:
        relief = height_map - tilt * np.log(r + 0.02)
        relief = cv2.GaussianBlur(relief.astype(np.float32), (0, 0), 1.2)
        rgy, rgx = np.gradient(relief)
        n_dot_v = 1.0 / np.sqrt(rgx * rgx + rgy * rgy + 1.0)
        convex = np.clip(-cv2.Laplacian(relief, cv2.CV_32F, ksize=3), 0, None)
        convex = np.clip(convex / (np.percentile(convex, 99) + 1e-6), 0, 1)
        wet = np.clip(1.6 * _smooth_noise(rng, h, w, 1.5) - rng.uniform(0.6, 1.2), 0, 1)
        glint = wet * convex * n_dot_v**30
        glint = glint * (1.0 + 2.0 * cv2.GaussianBlur(mask.astype(np.float32), (0, 0), 2.0))
        spec = np.clip(3.0 * glint * falloff, 0, 1.5).astype(np.float32)
    else:
        spec = np.zeros((h, w), np.float32)

    shade = (0.25 + 0.75 * lambert) * occlusion * falloff * style.exposure
    rgb = albedo * shade[..., None] + spec[..., None]
    rgb = rgb + style.noise * rng.standard_normal((h, w, 3)).astype(np.float32)
    rgb = np.clip(rgb, 0.0, 1.0) ** style.gamma
    rgb = cv2.GaussianBlur(rgb.astype(np.float32), (0, 0), 0.6)
    img = (np.clip(rgb, 0, 1) * 255.0 + 0.5).astype(np.uint8)

    # Composite onto the black frame; overlays stay on top.
    inside = fov & ~covered
    frame[inside] = img[inside]

    ys, xs = np.nonzero(main)
    truth = PhantomTruth(
        colour=colour,
        size=size_name(mask.sum() / (h * w)),
        shape=shape,
        texture=texture,
        swelling=swelling,
        location=location_name(xs.mean() / w, ys.mean() / h),
        n_polyps=len(polyps),
        area_fraction=float(mask.sum() / (h * w)),
        debris=has_debris,
        # Recorded as seen: wet patches can miss every convex spot and leave no glint.
        highlights=bool(((spec > 0.5) & inside).mean() > 0.0005),
        folds=has_folds,
        centre=style.name,
    )
    return PhantomSample(image=frame, mask=(mask * 255).astype(np.uint8), truth=truth)
