"""The caption stage: shards, gathering, triplet contents, bad input."""

from __future__ import annotations

import pandas as pd
import pytest

from ccis.caption.stage import caption_manifest
from ccis.caption.template import TemplateCaptioner
from ccis.caption.tokens import TokenCounter
from ccis.common.shards import gather_parts, parse_shard
from ccis.data.prepare import PhantomSpec, prepare_split


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    return prepare_split("train", root / "data", phantom=PhantomSpec(7, 0, 5, 128, 112))


def test_shards_gather_to_the_single_run(tmp_path, manifest):
    counter = TokenCounter()
    out = tmp_path / "captions"
    whole = caption_manifest(manifest, out / "whole.parquet", TemplateCaptioner(1), counter)
    parts = [
        caption_manifest(
            manifest, out / f"train.part{i}.parquet", TemplateCaptioner(1), counter, shard=(i, 3)
        )
        for i in range(3)
    ]
    assert [len(pd.read_parquet(p)) for p in parts] == [3, 2, 2]
    joined = gather_parts(parts, out / "train.parquet")
    a, b = pd.read_parquet(whole), pd.read_parquet(joined)
    pd.testing.assert_frame_equal(a, b)


def test_triplet_contents(tmp_path, manifest):
    out = caption_manifest(
        manifest, tmp_path / "c" / "train.parquet", TemplateCaptioner(), TokenCounter()
    )
    table = pd.read_parquet(out)
    assert list(table.columns[:6]) == ["id", "source", "split", "image", "mask", "caption"]
    row = table.iloc[0]
    assert (out.parent / row["image"]).is_file() and (out.parent / row["mask"]).is_file()
    assert row["captioner"] == "template" and row["captioner_version"].startswith("template-")
    assert {"colour", "size", "shape", "location", "debris"} <= set(row["attributes"])
    assert row["truth"]["colour"] in ("pale", "pink", "red")
    assert (table["caption_tokens"] <= 77).all() and not table["caption_cut"].any()
    agree = table["attributes"].map(lambda a: a["colour"]) == table["truth"].map(
        lambda t: t["colour"]
    )
    assert agree.mean() >= 0.8


def test_overlapping_shards_are_refused(tmp_path, manifest):
    part = caption_manifest(
        manifest, tmp_path / "p0.parquet", TemplateCaptioner(), TokenCounter(), shard=(0, 2)
    )
    with pytest.raises(ValueError, match="overlap"):
        gather_parts([part, part], tmp_path / "all.parquet")


def test_missing_image_is_named(tmp_path, manifest):
    broken = tmp_path / "data"
    broken.mkdir()
    frame = pd.read_parquet(manifest)
    frame.loc[0, "image"] = "train/images/gone.png"
    frame.to_parquet(broken / "m.parquet")
    with pytest.raises(
        FileNotFoundError, match=r"gone.png: missing or unreadable image \(listed in .*m.parquet\)"
    ):
        caption_manifest(
            broken / "m.parquet", tmp_path / "o.parquet", TemplateCaptioner(), TokenCounter()
        )


@pytest.mark.parametrize("bad", ["3/3", "1", "a/b", "-1/2"])
def test_parse_shard_rejects(bad):
    with pytest.raises(ValueError, match="I/N"):
        parse_shard(bad)
    assert parse_shard("2/3") == (2, 3)
