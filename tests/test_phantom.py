"""The phantom generator: determinism, exact masks, truthful attributes."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ccis.data.phantom import (
    COLOURS,
    SHAPES,
    field_of_view,
    location_name,
    render_phantom,
    size_name,
)
from ccis.data.prepare import PhantomSpec, prepare_split


def test_same_arguments_give_identical_frames():
    a = render_phantom(5, 0, 3, 128, 112)
    b = render_phantom(5, 0, 3, 128, 112)
    assert np.array_equal(a.image, b.image)
    assert np.array_equal(a.mask, b.mask)
    assert a.truth == b.truth
    c = render_phantom(6, 0, 3, 128, 112)
    assert not np.array_equal(a.image, c.image)


@pytest.mark.parametrize("centre", [0, 1, 2, 3])
def test_masks_are_exact_and_truth_matches_them(centre):
    for index in range(6):
        s = render_phantom(11, centre, index, 160, 144)
        assert s.image.shape == (144, 160, 3) and s.image.dtype == np.uint8
        assert s.mask.shape == (144, 160) and set(np.unique(s.mask)) <= {0, 255}
        fg = s.mask > 0
        assert fg.any()
        # Polyps lie inside the endoscope's field of view.
        fov = field_of_view(144, 160, ["octagon", "circle", "rounded", "octagon"][centre])
        assert not (fg & ~fov).any()
        assert s.truth.area_fraction == pytest.approx(fg.mean())
        assert s.truth.size == size_name(fg.mean())
        assert 1 <= s.truth.n_polyps <= 2
        if s.truth.n_polyps == 1:
            ys, xs = np.nonzero(fg)
            assert s.truth.location == location_name(xs.mean() / 160, ys.mean() / 144)
        # The frame outside the field of view is black.
        assert s.image[~fov].max() <= 10 or centre in (0, 3)  # overlays draw text there


def test_polyp_colour_categories_render_in_the_named_direction():
    """Mean polyp colour: red is darkest and most saturated, pale the least saturated."""
    stats: dict[str, list[float]] = {c: [] for c in COLOURS}
    for index in range(60):
        s = render_phantom(2, 0, index, 128, 112)
        rgb = s.image[s.mask > 0].astype(float).mean(axis=0)
        stats[s.truth.colour].append(rgb[1] / max(rgb[0], 1.0))  # green/red ratio
    means = {c: float(np.mean(v)) for c, v in stats.items()}
    assert means["red"] < means["pink"] < means["pale"]


def test_attributes_cover_every_category():
    truths = [render_phantom(0, 0, i, 96, 80).truth for i in range(80)]
    assert {t.colour for t in truths} == set(COLOURS)
    assert {t.shape for t in truths} == set(SHAPES)
    assert {t.size for t in truths} == {"small", "medium", "large"}
    assert {t.debris for t in truths} == {True, False}
    assert len({t.location for t in truths}) >= 7


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="centre"):
        render_phantom(0, 9, 0)
    with pytest.raises(ValueError, match="at least 32"):
        render_phantom(0, 0, 0, 16, 16)


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_prepare_is_byte_identical_for_the_same_seed(tmp_path):
    spec = PhantomSpec(count=5, centre=1, seed=9, width=96, height=80)
    prepare_split("train", tmp_path / "a", phantom=spec, workers=1)
    prepare_split("train", tmp_path / "b", phantom=spec, workers=2)  # order-independent
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    other = PhantomSpec(count=5, centre=1, seed=10, width=96, height=80)
    prepare_split("train", tmp_path / "c", phantom=other)
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")


def test_phantom_manifest_records_truth_and_hashes(tmp_path):
    spec = PhantomSpec(count=4, centre=0, seed=1, width=96, height=80)
    manifest = prepare_split("train", tmp_path, phantom=spec)
    frame = pd.read_parquet(manifest)
    assert list(frame["id"]) == [f"phantom-train-{i:05d}" for i in range(4)]
    assert (frame["source"] == "phantom-centre0").all()
    row = frame.iloc[0]
    assert set(row["truth"]) >= {
        "colour",
        "size",
        "shape",
        "texture",
        "swelling",
        "location",
        "debris",
        "highlights",
        "folds",
        "n_polyps",
    }
    data = (tmp_path / row["image"]).read_bytes()
    assert hashlib.sha256(data).hexdigest() == row["image_sha256"]
    assert row["width"] == 96 and row["height"] == 80
    assert 0 < row["area_fraction"] < 0.5 and row["n_components"] >= 1
