"""The bad-input catalogue: each case gets a clear error or a documented, logged handling."""

from __future__ import annotations

import logging
import os
import signal
import struct
import subprocess
import sys
import time
import zlib

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from ccis.data.prepare import DatasetError, PhantomSpec, SourceSpec, prepare_split
from conftest import disc_mask, frame, run_env, save, write_pairs


def _dataset(tmp_path, stems=("a", "b", "c")):
    root = tmp_path / "ds"
    write_pairs(root / "images", root / "masks", list(stems))
    return root


def _prepare(tmp_path, root, **kwargs):
    return prepare_split("s", tmp_path / "out", sources=[SourceSpec("kvasir-seg", root)], **kwargs)


def _assert_nothing_written(tmp_path):
    out = tmp_path / "out"
    assert not (out / "s.parquet").exists()
    assert not (out / "s").exists()
    assert not [p for p in out.iterdir() if ".tmp-" in p.name] if out.exists() else True


def test_truncated_image(tmp_path):
    root = _dataset(tmp_path)
    data = (root / "images" / "b.png").read_bytes()
    (root / "images" / "b.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match=r"images/b\.png: is not a readable image"):
        _prepare(tmp_path, root)
    _assert_nothing_written(tmp_path)


def test_garbage_file_with_image_suffix(tmp_path):
    root = _dataset(tmp_path)
    (root / "masks" / "a.png").write_bytes(b"this is not a png at all")
    with pytest.raises(DatasetError, match=r"masks/a\.png: is not a readable image"):
        _prepare(tmp_path, root)


def test_image_mask_size_mismatch(tmp_path):
    root = _dataset(tmp_path)
    save(root / "masks" / "c.png", disc_mask(width=50, height=40))
    with pytest.raises(
        DatasetError, match=r"masks/c\.png: mask is 50×40 but its image c\.png is 48×40"
    ):
        _prepare(tmp_path, root)


def test_jpeg_mask_with_grey_values_is_thresholded_and_logged(tmp_path, caplog):
    root = _dataset(tmp_path)
    save(root / "masks" / "a.jpg", disc_mask(), quality=60)
    (root / "masks" / "a.png").unlink()
    caplog.set_level(logging.INFO)
    manifest = _prepare(tmp_path, root)
    table = pd.read_parquet(manifest).set_index("id")
    assert "thresholded at 128" in table.loc["kvasir-a", "notes"]
    mask = np.asarray(Image.open(manifest.parent / table.loc["kvasir-a", "mask"]))
    assert set(np.unique(mask)) == {0, 255}
    assert "kvasir-a: mask: non-binary mask" in caplog.text


def test_mostly_grey_mask_is_refused(tmp_path):
    root = _dataset(tmp_path)
    save(root / "masks" / "a.png", frame(seed=4)[..., 0])  # a photo, not a mask
    with pytest.raises(DatasetError, match=r"masks/a\.png: does not look like a binary mask"):
        _prepare(tmp_path, root)


@pytest.mark.parametrize("policy", ["keep", "drop", "error"])
def test_empty_mask_policies(tmp_path, caplog, policy):
    root = _dataset(tmp_path)
    save(root / "masks" / "b.png", np.zeros((40, 48), np.uint8))
    caplog.set_level(logging.WARNING)
    if policy == "error":
        with pytest.raises(DatasetError, match=r"masks/b\.png: mask is empty"):
            _prepare(tmp_path, root, empty_masks=policy)
        return
    table = pd.read_parquet(_prepare(tmp_path, root, empty_masks=policy)).set_index("id")
    assert "1 empty mask(s)" in caplog.text and "kvasir-b" in caplog.text
    if policy == "keep":
        assert table.loc["kvasir-b", "n_components"] == 0
        assert table.loc["kvasir-b", "area_fraction"] == 0
    else:
        assert "kvasir-b" not in table.index and len(table) == 2
        assert not (tmp_path / "out" / "s" / "images" / "kvasir-b.png").exists()


def test_rgba_and_16bit_masks_are_converted(tmp_path):
    root = _dataset(tmp_path)
    rgba = np.zeros((40, 48, 4), np.uint8)
    rgba[..., :3] = disc_mask()[..., None]
    rgba[..., 3] = 255
    save(root / "masks" / "a.png", rgba)
    save(root / "masks" / "b.png", (disc_mask().astype(np.uint16) * 257))  # 16-bit 0/65535
    alpha_only = np.zeros((40, 48, 4), np.uint8)
    alpha_only[..., 3] = disc_mask()
    save(root / "masks" / "c.png", alpha_only)  # mask carried by the alpha channel
    manifest = _prepare(tmp_path, root)
    table = pd.read_parquet(manifest).set_index("id")
    assert "RGBA mask: alpha channel dropped" in table.loc["kvasir-a", "notes"]
    assert "scaled by its peak (65535)" in table.loc["kvasir-b", "notes"]
    assert "taken from its alpha channel" in table.loc["kvasir-c", "notes"]
    expected = disc_mask() > 0
    for pair_id in ("kvasir-a", "kvasir-b", "kvasir-c"):
        mask = np.asarray(Image.open(manifest.parent / table.loc[pair_id, "mask"]))
        assert np.array_equal(mask > 0, expected), pair_id


def test_zero_one_mask_is_scaled(tmp_path):
    root = _dataset(tmp_path)
    save(root / "masks" / "a.png", (disc_mask() // 255).astype(np.uint8))
    table = pd.read_parquet(_prepare(tmp_path, root)).set_index("id")
    assert "0/1-valued mask scaled" in table.loc["kvasir-a", "notes"]
    assert table.loc["kvasir-a", "n_components"] == 1


def test_unpaired_files_are_all_listed(tmp_path):
    root = _dataset(tmp_path)
    save(root / "images" / "only_image.png", frame())
    save(root / "masks" / "only_mask.png", disc_mask())
    with pytest.raises(DatasetError) as info:
        _prepare(tmp_path, root)
    text = str(info.value)
    assert "only_image.png: image has no mask" in text
    assert "only_mask.png: mask has no image" in text
    assert "2 problem(s)" in text


def test_duplicate_ids_within_a_folder_and_across_sources(tmp_path):
    root = _dataset(tmp_path)
    save(root / "images" / "a.jpg", frame())  # a.png and a.jpg: one id, two files
    with pytest.raises(DatasetError, match="several files for id 'a': a.jpg, a.png"):
        _prepare(tmp_path, root)
    (root / "images" / "a.jpg").unlink()
    other = _dataset(tmp_path / "second")
    with pytest.raises(DatasetError, match="duplicate id 'kvasir-a'"):
        prepare_split(
            "s", tmp_path / "out",
            sources=[SourceSpec("kvasir-seg", root), SourceSpec("kvasir-seg", other)],
        )  # fmt: skip
    # Duplicates are never skipped silently, even under on_bad_pair=skip.
    with pytest.raises(DatasetError, match="duplicate id"):
        prepare_split(
            "s", tmp_path / "out", on_bad_pair="skip",
            sources=[SourceSpec("kvasir-seg", root), SourceSpec("kvasir-seg", other)],
        )  # fmt: skip


def test_symlink_leaving_the_dataset_root(tmp_path):
    root = _dataset(tmp_path)
    outside = save(tmp_path / "elsewhere" / "secret.png", frame())
    os.symlink(outside, root / "images" / "d.png")
    save(root / "masks" / "d.png", disc_mask())
    with pytest.raises(
        DatasetError, match=r"images/d\.png: is a link to .*outside the data-set root"
    ):
        _prepare(tmp_path, root)
    # A link that stays inside the root is fine.
    (root / "images" / "d.png").unlink()
    os.symlink(root / "images" / "a.png", root / "images" / "d.png")
    assert len(pd.read_parquet(_prepare(tmp_path, root))) == 4


def test_zero_byte_file(tmp_path):
    root = _dataset(tmp_path)
    (root / "images" / "c.png").write_bytes(b"")
    with pytest.raises(DatasetError, match=r"images/c\.png: is an empty \(zero-byte\) file"):
        _prepare(tmp_path, root)


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header declares width×height but which carries almost no data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def test_huge_image_header_is_refused_before_decoding(tmp_path):
    root = _dataset(tmp_path)
    (root / "images" / "a.png").write_bytes(_png_header_only(30000, 30000))
    start = time.perf_counter()
    with pytest.raises(DatasetError, match=r"images/a\.png: header declares 30000×30000 pixels"):
        _prepare(tmp_path, root)
    assert time.perf_counter() - start < 10


def test_every_offending_file_is_listed_and_skip_leaves_them_out(tmp_path, caplog):
    root = _dataset(tmp_path, stems=["a", "b", "c", "d", "e"])
    (root / "images" / "a.png").write_bytes(b"")
    save(root / "masks" / "b.png", disc_mask(width=30, height=30))
    (root / "masks" / "c.png").write_bytes(_png_header_only(30000, 30000))
    save(root / "images" / "lonely.png", frame())
    with pytest.raises(DatasetError) as info:
        _prepare(tmp_path, root)
    text = str(info.value)
    for name in ("images/a.png", "masks/b.png", "masks/c.png", "images/lonely.png"):
        assert name in text
    assert "4 problem(s)" in text
    _assert_nothing_written(tmp_path)

    caplog.set_level(logging.WARNING)
    table = pd.read_parquet(_prepare(tmp_path, root, on_bad_pair="skip"))
    assert sorted(table["id"]) == ["kvasir-d", "kvasir-e"]
    assert caplog.text.count("skipped") == 4
    written = sorted(p.name for p in (tmp_path / "out" / "s" / "images").iterdir())
    assert written == ["kvasir-d.png", "kvasir-e.png"]


def test_rgba_and_16bit_images_are_converted(tmp_path):
    root = _dataset(tmp_path)
    rgba = np.concatenate([frame(), np.full((40, 48, 1), 200, np.uint8)], axis=2)
    save(root / "images" / "a.png", rgba)
    save(root / "images" / "b.png", frame()[..., 0])  # greyscale
    table = pd.read_parquet(_prepare(tmp_path, root)).set_index("id")
    assert "alpha channel dropped" in table.loc["kvasir-a", "notes"]
    assert "greyscale image expanded" in table.loc["kvasir-b", "notes"]


def test_killed_run_leaves_no_manifest_and_rerun_cleans_up(tmp_path):
    out = tmp_path / "out"
    cmd = [
        sys.executable, "-m", "ccis.cli", "prepare", "--split", "train", "--out", str(out),
        "--phantom-count", "400", "--width", "256", "--height", "224",
    ]  # fmt: skip
    proc = subprocess.Popen(
        cmd, env=run_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 60
    # Wait until it has written some frames into its temporary folder, then kill it hard.
    while time.time() < deadline:
        tmp = [p for p in out.glob(".train.tmp-*")] if out.exists() else []
        if tmp and len(list((tmp[0] / "images").glob("*.png"))) >= 3:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "train.parquet").exists()
    assert not (out / "train").exists()
    assert list(out.glob(".train.tmp-*"))  # the killed run's leftovers...
    spec = PhantomSpec(count=3, centre=0, seed=0, width=96, height=80)
    prepare_split("train", out, phantom=spec)
    assert not list(out.glob(".train*tmp-*"))  # ...are removed by the next run
    assert len(pd.read_parquet(out / "train.parquet")) == 3


def test_coloured_and_12bit_masks_keep_their_polyp(tmp_path):
    root = _dataset(tmp_path)
    red = np.zeros((40, 48, 3), np.uint8)
    red[..., 0] = disc_mask()  # a pure red mask: its channel mean is only 85
    save(root / "masks" / "a.png", red)
    save(root / "masks" / "b.png", (disc_mask().astype(np.uint16) // 255) * 4095)  # 12-bit
    table = pd.read_parquet(_prepare(tmp_path, root)).set_index("id")
    expected = (disc_mask() > 0).sum()
    for pair_id in ("kvasir-a", "kvasir-b"):
        mask = np.asarray(Image.open(tmp_path / "out" / table.loc[pair_id, "mask"]))
        assert (mask > 0).sum() == expected, pair_id


def test_mask_that_thresholding_would_empty_is_refused(tmp_path):
    root = _dataset(tmp_path)
    save(root / "masks" / "a.png", (disc_mask() // 255 * 60).astype(np.uint8))  # 0/60 levels
    with pytest.raises(
        DatasetError, match=r"masks/a\.png: mask has non-zero pixels but none reaches 128"
    ):
        _prepare(tmp_path, root)


def test_suspicious_masks_are_flagged_dropped_or_refused(tmp_path, caplog):
    """Whole-frame masks, specks and a region cut by all four borders (data.suspicious_masks)."""
    root = _dataset(tmp_path, ("fine", "full", "specks", "border"))
    full = np.full((40, 48), 255, np.uint8)
    full[:2, :2] = 0  # nearly the whole frame
    save(root / "masks" / "full.png", full)
    specks = disc_mask()
    specks[35, 45] = 255  # one stray pixel: 1 of 1920, under 0.1 %
    save(root / "masks" / "specks.png", specks)
    border = np.zeros((40, 48), np.uint8)
    border[:, 20:24] = 255
    border[18:22, :] = 255  # a cross from edge to edge: 20 % of the frame
    save(root / "masks" / "border.png", border)
    with caplog.at_level(logging.WARNING, logger="ccis"):
        table = pd.read_parquet(_prepare(tmp_path, root))
    notes = dict(zip(table["id"], table["notes"], strict=True))
    assert notes["kvasir-fine"] is None
    assert "suspicious mask: covers 99.8% of the frame" in notes["kvasir-full"]
    assert "suspicious mask: 1 speck(s) below 0.1% of the frame" in notes["kvasir-specks"]
    assert "touches all four frame borders" in notes["kvasir-border"]
    assert "3 suspicious mask(s) kept" in caplog.text and "masks/specks.png" in caplog.text

    drop = pd.read_parquet(
        prepare_split("d", tmp_path / "out", sources=[SourceSpec("kvasir-seg", root)],
                      suspicious_masks="drop")
    )  # fmt: skip
    assert drop["id"].tolist() == ["kvasir-fine"]
    assert sorted(p.name for p in (tmp_path / "out" / "d" / "masks").iterdir()) == [
        "kvasir-fine.png"
    ]
    with pytest.raises(DatasetError, match=r"(?s)masks/border\.png.*masks/full\.png.*specks"):
        prepare_split("e", tmp_path / "out", sources=[SourceSpec("kvasir-seg", root)],
                      suspicious_masks="error")  # fmt: skip


def test_stray_files_are_logged_by_name_and_exif_orientation_is_noted(tmp_path, caplog):
    root = _dataset(tmp_path)
    (root / "images" / "Thumbs.db").write_bytes(b"\0" * 10)
    (root / "images" / "notes.txt").write_text("annotator notes")
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    Image.fromarray(frame(seed=7)).save(root / "images" / "b.png", exif=exif)
    with caplog.at_level(logging.WARNING, logger="ccis"):
        table = pd.read_parquet(_prepare(tmp_path, root))
    assert "ignored 2 file(s) that are not images" in caplog.text
    assert "Thumbs.db, notes.txt" in caplog.text
    notes = dict(zip(table["id"], table["notes"], strict=True))
    assert notes["kvasir-b"] == "image: EXIF orientation 6 ignored: pixels read as stored"
    assert notes["kvasir-a"] is None
    stored = np.asarray(
        Image.open(tmp_path / "out" / table.set_index("id").at["kvasir-b", "image"])
    )
    assert np.array_equal(stored, frame(seed=7))  # as stored, not rotated
