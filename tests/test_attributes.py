"""Attribute measurement against the phantom's ground truth, and awkward inputs."""

from __future__ import annotations

import numpy as np
import pytest

from ccis.caption.attributes import measure_attributes
from ccis.data.phantom import render_phantom
from conftest import disc_mask


@pytest.mark.parametrize(("width", "height"), [(352, 352), (224, 192)])
def test_colour_size_location_agree_with_truth(width, height):
    samples = [render_phantom(21, 0, i, width, height) for i in range(50)]
    hits = {"colour": 0, "size": 0, "location": 0, "n_polyps": 0}
    for s in samples:
        a = measure_attributes(s.image, s.mask)
        for key in hits:
            hits[key] += getattr(a, key) == getattr(s.truth, key)
    rates = {k: v / len(samples) for k, v in hits.items()}
    assert min(rates.values()) >= 0.9, rates


def test_other_attributes_beat_chance():
    samples = [render_phantom(5, 0, i, 352, 352) for i in range(60)]
    measured = [measure_attributes(s.image, s.mask) for s in samples]
    for key, chance in [("shape", 0.25), ("texture", 0.5), ("swelling", 0.25), ("debris", 0.6)]:
        rate = np.mean(
            [
                getattr(a, key) == getattr(s.truth, key)
                for a, s in zip(measured, samples, strict=True)
            ]
        )
        assert rate > chance + 0.2, (key, rate)


def test_empty_mask_gives_no_polyp():
    image = render_phantom(0, 0, 0, 128, 112).image
    a = measure_attributes(image, np.zeros((112, 128), np.uint8))
    assert a.n_polyps == 0 and a.colour == "none" and a.location == "none"
    assert a.area_fraction == 0.0 and not a.touches_border


def test_mask_touching_the_border():
    s = render_phantom(0, 0, 1, 128, 112)
    mask = np.zeros((112, 128), np.uint8)
    mask[:30, :40] = 255  # a polyp cut by the frame's corner
    a = measure_attributes(s.image, mask)
    assert a.touches_border and a.n_polyps == 1 and a.location == "upper left"


def test_many_components_and_specks():
    image = render_phantom(0, 0, 2, 200, 160).image
    mask = np.zeros((160, 200), np.uint8)
    for i in range(6):  # six real blobs
        mask |= disc_mask(200, 160, cx=20 + 30 * i, cy=80, r=8)
    rng = np.random.default_rng(0)
    for y, x in rng.integers(0, 160, (40, 2)):  # forty one-pixel annotation specks
        mask[y, min(x, 199)] = 255
    a = measure_attributes(image, mask)
    assert a.n_polyps == 6


def test_grey_image_is_measured_without_error():
    image = np.full((96, 96, 3), 128, np.uint8)
    a = measure_attributes(image, disc_mask(96, 96, 48, 48, 20))
    assert a.n_polyps == 1 and a.colour == "pale"  # colourless reads as pale
    assert not a.debris and not a.highlights


def test_binary_zero_one_mask_and_bad_shapes():
    s = render_phantom(0, 0, 3, 96, 80)
    a255 = measure_attributes(s.image, s.mask)
    a01 = measure_attributes(s.image, (s.mask > 0).astype(np.uint8))
    assert a255 == a01
    with pytest.raises(ValueError, match="H×W×3"):
        measure_attributes(s.image[..., 0], s.mask)
    with pytest.raises(ValueError, match="differs from image shape"):
        measure_attributes(s.image, s.mask[:-1])


def _flat_frame(polyp_rgb, mucosa_rgb, radius: int, size: int = 200) -> tuple:
    """A uniformly lit frame: one disc of ``polyp_rgb`` on ``mucosa_rgb``."""
    image = np.empty((size, size, 3), np.uint8)
    image[:] = mucosa_rgb
    mask = disc_mask(size, size, size // 2, size // 2, radius)
    image[mask > 0] = polyp_rgb
    return image, mask


def test_colour_is_also_judged_against_the_mucosa():
    # Green/red 0.48 is "pink" on its own; against a mucosa at 0.55 the polyp is redder.
    image, mask = _flat_frame((200, 96, 80), (200, 110, 90), 40)
    a = measure_attributes(image, mask)
    assert a.chroma_gr == pytest.approx(0.48) and a.mucosa_chroma_gr == pytest.approx(0.55)
    assert a.colour == "red"
    image, mask = _flat_frame((200, 104, 80), (200, 110, 90), 40)  # 0.52: not clearly redder
    assert measure_attributes(image, mask).colour == "pink"


def test_close_ups_read_raised():
    # No top-to-rim relief at all: flat when small, raised when it fills the view.
    image, mask = _flat_frame((200, 104, 80), (200, 110, 90), 40)
    assert measure_attributes(image, mask).swelling == "flat"
    image, mask = _flat_frame((200, 104, 80), (200, 110, 90), 70)  # 38 % of the frame
    a = measure_attributes(image, mask)
    assert a.area_fraction > 0.24 and abs(a.relief) < 0.02 and a.swelling == "moderate"
