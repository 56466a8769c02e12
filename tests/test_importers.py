"""Importers for the real data-set layouts, each on a tiny fake copy of its folders."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from ccis.data.layouts import discover, resolve_layout
from ccis.data.prepare import SourceSpec, prepare_split
from conftest import disc_mask, frame, save, write_pairs


def _import(tmp_path, fmt, root, name=None):
    manifest = prepare_split("s", tmp_path / "out", sources=[SourceSpec(fmt, root, name)])
    return manifest, pd.read_parquet(manifest)


def _check_normalised(manifest, table):
    for row in table.itertuples():
        img = np.asarray(Image.open(manifest.parent / row.image))
        mask = np.asarray(Image.open(manifest.parent / row.mask))
        assert img.ndim == 3 and img.shape[2] == 3 and img.dtype == np.uint8
        assert mask.ndim == 2 and set(np.unique(mask)) <= {0, 255}
        assert img.shape[:2] == mask.shape == (row.height, row.width)


def test_pranet_train_split_separates_kvasir_and_clinicdb(tmp_path):
    root = tmp_path / "TrainDataset"
    write_pairs(root / "images", root / "masks", ["cju0qkwl35piu0993l0dewei2", "12", "7"])
    manifest, table = _import(tmp_path, "pranet", root)
    assert sorted(table["id"]) == ["clinicdb-12", "clinicdb-7", "kvasir-cju0qkwl35piu0993l0dewei2"]
    assert set(table["source"]) == {"clinicdb", "kvasir"}
    _check_normalised(manifest, table)


def test_pranet_test_subset_is_named_after_its_folder(tmp_path):
    root = tmp_path / "TestDataset" / "CVC-300"
    write_pairs(root / "images", root / "masks", ["149"])
    _, table = _import(tmp_path, "pranet", root)
    assert list(table["id"]) == ["cvc-300-149"]


def test_prefixed_layout_reports_masks_without_the_prefix(tmp_path):
    root = tmp_path / "ETIS"
    write_pairs(
        root / "ETIS-LaribPolypDB", root / "GroundTruth", ["1"], ".tif", ".tif", mask_prefix="p"
    )
    save(root / "GroundTruth" / "2.tif", disc_mask())
    pairs, problems = discover("etis", root)
    assert [p.id for p in pairs] == ["etis-1"]
    assert "does not start with 'p'" in str(problems[0]) and "2.tif" in str(problems[0])


def test_pranet_test_subset_with_name(tmp_path):
    root = tmp_path / "TestDataset" / "CVC-300"
    write_pairs(root / "images", root / "masks", ["149", "150"])
    _, table = _import(tmp_path, "pranet", root, "cvc300")
    assert list(table["id"]) == ["cvc300-149", "cvc300-150"]


def test_kvasir_seg_jpeg_masks_are_thresholded(tmp_path):
    root = tmp_path / "Kvasir-SEG"
    for i, stem in enumerate(["cju0a", "cju0b"]):
        save(root / "images" / f"{stem}.jpg", frame(seed=i), quality=90)
        # A 3-channel JPEG mask: its edges get grey levels, as the real ones have.
        mask = np.repeat(disc_mask()[..., None], 3, axis=2)
        save(root / "masks" / f"{stem}.jpg", mask, quality=75)
    raw = np.asarray(Image.open(root / "masks" / "cju0a.jpg"))
    assert ((raw > 0) & (raw < 255)).any()  # the fixture really is noisy
    manifest, table = _import(tmp_path, "kvasir-seg", root)
    assert list(table["id"]) == ["kvasir-cju0a", "kvasir-cju0b"]
    assert all("thresholded at 128" in n for n in table["notes"])
    _check_normalised(manifest, table)
    out = np.asarray(Image.open(manifest.parent / table.iloc[0]["mask"])) > 0
    assert abs(out.sum() - (disc_mask() > 0).sum()) <= 6


@pytest.mark.parametrize(
    ("image_dir", "mask_dir", "ext"),
    [("Original", "Ground Truth", ".tif"), ("PNG/Original", "PNG/Ground Truth", ".png")],
)
def test_cvc_clinicdb_tif_and_png(tmp_path, image_dir, mask_dir, ext):
    root = tmp_path / "CVC-ClinicDB"
    write_pairs(root / image_dir, root / mask_dir, ["1", "2", "3"], ext, ext, size=(48, 36))
    manifest, table = _import(tmp_path, "cvc-clinicdb", root)
    assert list(table["id"]) == ["clinicdb-1", "clinicdb-2", "clinicdb-3"]
    assert (table["width"] == 48).all() and (table["height"] == 36).all()
    _check_normalised(manifest, table)


def test_cvc_300_endoscene_layout(tmp_path):
    root = tmp_path / "CVC-300"
    write_pairs(root / "bbdd", root / "gtpolyp", ["1", "2"], ".bmp", ".bmp")
    _, table = _import(tmp_path, "cvc-300", root)
    assert list(table["id"]) == ["cvc300-1", "cvc300-2"]


def test_cvc_colondb_flat_folder_with_p_prefixed_masks(tmp_path):
    root = tmp_path / "CVC-ColonDB"
    write_pairs(root, root, ["1", "2", "10"], ".tiff", ".tiff", mask_prefix="p")
    _, table = _import(tmp_path, "cvc-colondb", root)
    assert sorted(table["id"]) == ["colondb-1", "colondb-10", "colondb-2"]
    assert (table["n_components"] == 1).all()


def test_etis_layout(tmp_path):
    root = tmp_path / "ETIS"
    write_pairs(
        root / "ETIS-LaribPolypDB",
        root / "GroundTruth",
        ["1", "2"],
        ".tif",
        ".tif",
        mask_prefix="p",
    )
    _, table = _import(tmp_path, "etis", root)
    assert list(table["id"]) == ["etis-1", "etis-2"]


def test_several_sources_in_one_split(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    write_pairs(a / "images", a / "masks", ["x1"])
    write_pairs(b / "Original", b / "Ground Truth", ["1"], ".tif", ".tif")
    manifest = prepare_split(
        "train",
        tmp_path / "out",
        sources=[SourceSpec("kvasir-seg", a), SourceSpec("cvc-clinicdb", b)],
    )
    assert sorted(pd.read_parquet(manifest)["id"]) == ["clinicdb-1", "kvasir-x1"]


def test_wrong_layout_says_what_was_expected(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="not a cvc-clinicdb folder.*Ground Truth"):
        resolve_layout("cvc-clinicdb", tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        discover("pranet", tmp_path / "missing")
    with pytest.raises(ValueError, match="unknown data-set format"):
        discover("nope", tmp_path)


def test_source_spec_parsing():
    spec = SourceSpec.parse("pranet:cvc300=/data/TestDataset/CVC-300")
    assert (spec.format, spec.name, str(spec.root)) == (
        "pranet",
        "cvc300",
        "/data/TestDataset/CVC-300",
    )
    assert SourceSpec.parse("etis=/x").name is None
    with pytest.raises(ValueError, match="FORMAT=ROOT"):
        SourceSpec.parse("etis")
