"""Generation metrics: the real clean-fid and open_clip code paths on tiny local networks.

Nothing here may download: ``urllib.request.urlopen`` is made to fail for every test, and
the Inception and CLIP lookups point at empty folders or files the tests write.
"""

from __future__ import annotations

import json
import urllib.request
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from ccis.cli import main
from ccis.common.images import encode_png
from ccis.data.phantom import render_phantom
from ccis.metrics.agreement import attribute_agreement
from ccis.metrics.base import NotComputed
from ccis.metrics.clip_scores import clip_scores, load_clip
from ccis.metrics.evaluate import generation_metrics
from ccis.metrics.fid import INCEPTION_FILE, compute_fid, find_inception, inception_extractor
from ccis.metrics.fidelity import dice, mask_fidelity
from ccis.metrics.table import table1

COLOURS = ("pale", "pink", "red")
LONG_CAPTION = " ".join(["a reddish polyp with a rough surface"] * 20)  # > 77 tokens


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any download attempt (clean-fid, open_clip URL weights) fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"download attempted: {args[:1]}")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)


class TinyFeatures(torch.nn.Module):
    """A fixed 12-feature extractor on clean-fid's 299×299 batches (mean colour per quadrant)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.adaptive_avg_pool2d(x / 255.0, 2).flatten(1)


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> tuple[str, str]:
    """A tiny open_clip model: its config JSON and a saved state dict (random weights)."""
    import open_clip

    folder = tmp_path_factory.mktemp("clip")
    config = {
        "embed_dim": 16,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16,
                       "patch_size": 8},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2,
                     "layers": 2},
    }  # fmt: skip
    config_path = folder / "ccis-test-tiny-clip.json"
    config_path.write_text(json.dumps(config))
    open_clip.add_model_config(config_path)
    torch.manual_seed(0)
    model = open_clip.create_model("ccis-test-tiny-clip")
    weights = folder / "tiny-clip.pt"
    torch.save(model.state_dict(), weights)
    return str(config_path), str(weights)


def _write(path: Path, array: np.ndarray) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_png(array))
    return str(path)


def make_sets(root: Path, n: int = 6, swap: bool = False, generator: str = "ccis"):
    """Phantom triplets and a synthetic set that copies them (sizes differ from the real).

    With ``swap`` the prompt attributes name another colour and the other texture.
    """
    rows, synthetic = [], []
    for i in range(n):
        sample = render_phantom(5, 0, i, 160, 128)
        truth = asdict(sample.truth)
        attributes = {k: truth[k] for k in ("colour", "size", "shape", "texture", "swelling",
                                            "location")}  # fmt: skip
        if swap:
            attributes["colour"] = COLOURS[(COLOURS.index(truth["colour"]) + 1) % 3]
            attributes["texture"] = "smooth" if truth["texture"] == "rough" else "rough"
        real_id = f"phantom-{i:02d}"
        _write(root / "data" / "images" / f"{real_id}.png", sample.image)
        _write(root / "data" / "masks" / f"{real_id}.png", sample.mask)
        caption = LONG_CAPTION if i == 0 else f"The polyp is {truth['colour']}."
        rows.append({"id": real_id, "image": f"../data/images/{real_id}.png",
                     "mask": f"../data/masks/{real_id}.png", "caption": caption,
                     "attributes": attributes})  # fmt: skip
        sid = f"synthetic-{generator}-{real_id}"
        _write(root / "synthetic" / generator / "images" / f"{sid}.png", sample.image)
        _write(root / "synthetic" / generator / "masks" / f"{sid}.png", sample.mask)
        synthetic.append({"id": sid, "image": f"{generator}/images/{sid}.png",
                          "mask": f"{generator}/masks/{sid}.png", "caption": caption,
                          "real_id": real_id, "generator": generator})  # fmt: skip
    triplets = root / "captions" / "train.parquet"
    triplets.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(triplets)
    manifest = root / "synthetic" / f"{generator}.parquet"
    pd.DataFrame(synthetic).to_parquet(manifest)
    return manifest, triplets


def _images(folder: Path, n: int, size: tuple[int, int], shift: int = 0) -> list[str]:
    rng = np.random.default_rng(size[0])
    paths = []
    for i in range(n):
        image = rng.integers(40, 160, (size[1], size[0], 3)).astype(np.int16) + shift
        paths.append(_write(folder / f"{i}.png", image.clip(0, 255).astype(np.uint8)))
    return paths


def test_fid_real_code_path_with_tiny_extractor(tmp_path):
    real = _images(tmp_path / "real", 8, (48, 40))
    same = _images(tmp_path / "same", 8, (48, 40))
    shifted = _images(tmp_path / "shifted", 8, (64, 64), shift=80)  # other size: resized
    extractor = TinyFeatures().eval()
    identical = compute_fid(same, real, feature_extractor=extractor, extractor_name="tiny")
    far = compute_fid(shifted, real, feature_extractor=extractor, extractor_name="tiny")
    assert identical.value == pytest.approx(0.0, abs=1e-6)
    assert far.value > 0.1 > identical.value
    assert far.details["feature_extractor"] == "tiny" and far.details["feature_dim"] == 12
    assert far.details["n_synthetic"] == 8 and "note" in far.details  # 8 images < 12 dims


def test_fid_not_computed_without_inception_weights(tmp_path):
    real = _images(tmp_path / "real", 3, (48, 40))
    empty = tmp_path / "empty"
    empty.mkdir()
    result = compute_fid(real, real, inception_dir=empty)
    assert isinstance(result, NotComputed)
    assert str(empty / INCEPTION_FILE) in result.reason
    legacy = compute_fid(real, real, inception_dir=empty, mode="legacy_pytorch")
    assert isinstance(legacy, NotComputed) and "checkpoints" in legacy.reason
    # Present but broken weights are bad input, named in the error.
    (empty / INCEPTION_FILE).write_bytes(b"not torchscript")
    assert find_inception(empty) == empty / INCEPTION_FILE
    with pytest.raises(ValueError, match=INCEPTION_FILE):
        inception_extractor(empty / INCEPTION_FILE)
    # A TorchScript file shaped like clean-fid's Inception loads through its wrapper.
    torch.jit.save(torch.jit.script(FakeInception()), empty / INCEPTION_FILE)
    features = inception_extractor(find_inception(empty))(torch.zeros(2, 3, 299, 299))
    assert features.shape == (2, 2048)


class FakeInceptionLayers(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Conv2d(3, 2048, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(torch.nn.functional.adaptive_avg_pool2d(x, 1))


class FakeInception(torch.nn.Module):
    """The interface clean-fid's InceptionV3W uses: ``.layers`` giving N×2048×1×1 features."""

    def __init__(self):
        super().__init__()
        self.layers = FakeInceptionLayers()

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        return self.layers(x)


def test_clip_scores_with_tiny_local_model(tmp_path, tiny_clip):
    config, weights = tiny_clip
    manifest, triplets = make_sets(tmp_path, n=4)
    clip = load_clip(config, weights)
    assert not isinstance(clip, NotComputed) and clip.context_length == 77
    images = sorted((tmp_path / "synthetic" / "ccis" / "images").glob("*.png"))
    sources = sorted((tmp_path / "data" / "images").glob("*.png"))
    captions = [LONG_CAPTION, "a red polyp", "a pale polyp", ""]
    score, image, per_score, per_image = clip_scores(clip, images, captions, sources)
    assert 0.0 <= score.value <= 100.0 and (per_score >= 0).all()
    assert image.value == pytest.approx(100.0, abs=1e-3)  # each image is its own source
    assert score.details["n_truncated_captions"] == 1
    other = clip_scores(clip, images, captions, sources[::-1])[1]
    assert -100.0 <= other.value < 100.0 - 1e-3


def test_clip_not_computed_offline(tmp_path, tiny_clip):
    config, _ = tiny_clip
    missing = load_clip(config, str(tmp_path / "missing.pt"))
    assert isinstance(missing, NotComputed) and "missing.pt" in missing.reason
    assert isinstance(load_clip(config, None), NotComputed)  # no weights configured
    # A real tag, with empty caches: found nowhere, and no download is tried.
    uncached = load_clip("ViT-B-32", "openai", cache_dir=tmp_path / "cache")
    assert isinstance(uncached, NotComputed) and "not in the local cache" in uncached.reason
    unknown = load_clip("ViT-B-32", "no-such-tag")
    assert isinstance(unknown, NotComputed) and "pretrained tag" in unknown.reason
    (tmp_path / "broken.pt").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="broken.pt"):
        load_clip(config, str(tmp_path / "broken.pt"))


def test_attribute_agreement_on_phantoms():
    samples = [render_phantom(5, 0, i, 160, 128) for i in range(8)]

    def run(swap: bool):
        prompts = []
        for s in samples:
            truth = asdict(s.truth)
            if swap:
                truth["colour"] = COLOURS[(COLOURS.index(truth["colour"]) + 1) % 3]
                truth["texture"] = "smooth" if truth["texture"] == "rough" else "rough"
            prompts.append(truth)
        return attribute_agreement(
            (s.image, s.mask, p) for s, p in zip(samples, prompts, strict=True)
        )

    matched, rows = run(False)
    swapped, _ = run(True)
    assert matched.value >= 75.0 and swapped.value <= 25.0
    assert matched.details["per_attribute"]["colour"] == 100.0
    assert matched.details["per_attribute"]["size"] == 100.0  # read from the same mask
    assert swapped.details["per_attribute"]["colour"] == 0.0
    assert len(rows) == 8 and set(rows[0]) >= {"colour_match", "texture_match"}


def test_mask_fidelity_with_fake_segmenter(tmp_path):
    _, _ = make_sets(tmp_path, n=3)
    images = sorted((tmp_path / "synthetic" / "ccis" / "images").glob("*.png"))
    masks = sorted((tmp_path / "synthetic" / "ccis" / "masks").glob("*.png"))
    from ccis.metrics.base import read_mask

    truth = iter([read_mask(m) / 255.0 for m in masks])
    perfect, scores = mask_fidelity(images, masks, lambda b: [next(truth) for _ in b], batch_size=2)
    assert perfect.value == pytest.approx(100.0) and len(scores) == 3
    blank, _ = mask_fidelity(images, masks, lambda b: [np.zeros(i.shape[:2]) for i in b])
    assert blank.value == 0.0
    assert dice(np.zeros((4, 4), np.uint8), np.zeros((4, 4))) == 1.0
    half = np.zeros((4, 4), np.uint8)
    half[:2] = 255
    assert dice(half, np.ones((2, 2))) == pytest.approx(2 * 8 / (8 + 16))  # resized prediction


def test_generation_metrics_json_and_table(tmp_path, tiny_clip):
    config, weights = tiny_clip
    manifest, triplets = make_sets(tmp_path / "a", n=4)
    out = tmp_path / "metrics" / "ccis.json"
    per_image = tmp_path / "metrics" / "ccis.parquet"
    text = _text_table(
        tmp_path / "ccis.text.parquet", [True, True, True, False], local=[1.0, 1.0, 0.5, 0.5]
    )
    report = generation_metrics(
        "ccis", manifest, triplets, out, clip_model=config, clip_pretrained=weights,
        segment=lambda b: [np.ones(i.shape[:2]) for i in b], fid_feature_extractor=TinyFeatures(),
        device="cpu", batch_size=3, per_image=per_image, text_adherence=text,
    )  # fmt: skip
    written = json.loads(out.read_text())
    assert written == report and written["n_synthetic"] == 4
    metrics = written["metrics"]
    assert all(m["status"] == "computed" for m in metrics.values())
    assert metrics["fid"]["value"] == pytest.approx(0.0, abs=1e-6)
    assert metrics["clip_image"]["value"] == pytest.approx(100.0, abs=1e-3)
    assert metrics["clip_score"]["n_truncated_captions"] == 1
    assert metrics["text_adherence"]["value"] == pytest.approx(75.0)
    low, high = metrics["text_adherence"]["ci95"]
    assert 0 <= low <= 75.0 <= high <= 100
    assert metrics["attribute_agreement"]["ci95"][0] <= metrics["attribute_agreement"]["value"]
    assert metrics["colour_localisation"]["value"] == pytest.approx(75.0)
    assert metrics["colour_localisation"]["chance"] == 50.0
    rows = pd.read_parquet(per_image)
    assert len(rows) == 4 and rows["text_win"].tolist() == [True, True, True, False]
    assert rows["localisation"].tolist() == [1.0, 1.0, 0.5, 0.5]
    assert written["per_image"] == "ccis.parquet"

    # Offline defaults through the CLI: no Inception file, no cached tag, no segmenter.
    manifest_b, triplets_b = make_sets(tmp_path / "b", n=3, swap=True, generator="controlnet")
    out_b = tmp_path / "metrics" / "controlnet.json"
    code = main([
        "metrics-generation", "--generator", "controlnet", "--synthetic", str(manifest_b),
        "--real", str(triplets_b), "--out", str(out_b), "--clip-model", "ViT-B-32",
        "--clip-pretrained", "openai", "--clip-cache", str(tmp_path / "cache"),
        "--inception-dir", str(tmp_path), "--device", "cpu", "--threads", "1",
        "--per-image", str(tmp_path / "metrics" / "controlnet.parquet"),
        "--text-adherence", str(_text_table(tmp_path / "cn.text.parquet", [False] * 3)),
    ])  # fmt: skip
    assert code == 0
    offline = json.loads(out_b.read_text())["metrics"]
    for key in ("fid", "clip_score", "clip_image", "mask_fidelity"):
        assert offline[key]["status"] == "not computed" and offline[key]["reason"]
    assert offline["attribute_agreement"]["value"] <= 25.0  # prompts swapped

    csv_path, md_path = tmp_path / "t1.csv", tmp_path / "t1.md"
    assert main(["generation-table", "--out-csv", str(csv_path), "--out-md", str(md_path),
                 "--paper", str(out_b), str(out)]) == 0  # fmt: skip
    table = pd.read_csv(csv_path)
    assert list(table["generator"]) == ["ccis", "controlnet"]  # the paper's order
    assert table.loc[1, "fid_note"].startswith("not computed: ")
    assert table.loc[0, "paper_fid"] == 71.73
    markdown = md_path.read_text()
    assert "not computed [1]" in markdown and "inception-2015-12-05.pt" in markdown
    assert "71.73" in markdown and "ControlNet" in markdown
    assert "75.0 [" in markdown  # value with its interval
    # Paired over the 3 masks both have: ccis wins on 3, controlnet on none.
    assert "| ControlNet | Text adherence | +100.0 * | [+100.0, +100.0] | 3 |" in markdown
    assert "| ControlNet | Attribute agreement |" in markdown
    # ControlNet's colour word acts on the whole frame (0.5), CCIS-Diff's on 2 of 3 polyps.
    assert "| ControlNet | Colour localisation | +33.3 |" in markdown
    assert "Colour localisation (%) ↑" in markdown


def _text_table(path: Path, wins: list[bool], local: list[float] | None = None) -> Path:
    """A ccis text-adherence table for the first len(wins) phantom masks of make_sets;
    ``local``: each mask's colour localisation (default 0.5, a frame-wide change)."""
    local = local or [0.5] * len(wins)
    frame = pd.DataFrame({
        "real_id": [f"phantom-{i:02d}" for i in range(len(wins))],
        "chroma_pale": [0.6 if w else 0.4 for w in wins], "chroma_red": [0.5] * len(wins),
        "text_win": wins, "change_polyp": [0.2] * len(wins),
        "change_background": [0.2 * (1 - x) / x for x in local], "localisation": local,
    })  # fmt: skip
    frame.to_parquet(path)
    return path


class _Recolouring:
    """A stand-in pipeline: grey frames whose polyp (``local``) or whole frame turns red
    when the prompt says "red" — a colour word that acts where it should, or everywhere."""

    def __init__(self, local: bool) -> None:
        self.local = local

    def __call__(self, prompts, masks, **kwargs):
        images = []
        for prompt, mask in zip(prompts, masks, strict=True):
            image = np.full((*mask.shape, 3), 0.5)
            where = mask > 0 if self.local else np.ones(mask.shape, bool)
            if " red" in prompt:
                image[where] = (0.8, 0.2, 0.2)
            images.append(image)
        return images


def test_colour_localisation_tells_a_polyp_change_from_a_frame_wide_one():
    from ccis.metrics.text_adherence import (
        colour_localisation_result,
        localisation,
        text_adherence_pairs,
    )

    masks = [np.zeros((16, 16), np.uint8) for _ in range(5)]
    for k, mask in enumerate(masks):
        mask[2 + k : 8 + k, 3:9] = 255
    captions = ["The polyp is reddish and round."] * 5
    scores = {}
    for local in (True, False):
        pairs = text_adherence_pairs(_Recolouring(local), masks, captions, list(range(5)))
        assert pairs["text_win"].all()  # text adherence alike
        scores[local] = colour_localisation_result(pd.DataFrame(pairs)).value
    assert scores == {True: pytest.approx(100.0), False: pytest.approx(50.0)}
    assert np.isnan(localisation(np.array([0.0]), np.array([0.0]))).all()  # nothing changed


def test_tables_written_before_colour_localisation_still_read(tmp_path):
    """An older text-adherence table or metrics file: the metric says why it is missing."""
    from ccis.metrics.text_adherence import colour_localisation_result

    old = pd.read_parquet(_text_table(tmp_path / "old.parquet", [True, False]))
    result = colour_localisation_result(old.drop(columns=["localisation"]))
    assert isinstance(result, NotComputed) and "re-run text_adherence" in result.reason
    manifest, triplets = make_sets(tmp_path / "a", n=2)
    out = tmp_path / "ccis.json"
    generation_metrics(
        "ccis", manifest, triplets, out, segment=lambda b: [np.ones(i.shape[:2]) for i in b],
        fid_feature_extractor=TinyFeatures(), clip_pretrained=tmp_path / "none.pt",
        device="cpu", text_adherence=_text_table(tmp_path / "t.parquet", [True, True]),
    )  # fmt: skip
    report = json.loads(out.read_text())
    del report["metrics"]["colour_localisation"]
    out.write_text(json.dumps(report))
    _, md = table1([out], tmp_path / "t1.csv", tmp_path / "t1.md")
    assert "predates colour localisation" in md.read_text()


def test_bootstrap_intervals_and_paired_differences():
    from ccis.metrics.bootstrap import paired_difference, rate, rate_interval

    rng = np.random.default_rng(0)
    wins = (rng.random(200) < 0.7).astype(float)
    low, high = rate_interval(wins)
    assert low < rate(wins) < high and high - low < 20  # n = 200: about ±6.4 points
    assert rate_interval(wins) == (low, high)  # seeded
    # Columns with gaps (NaN: not stated) are rates over the images that state them.
    matrix = np.array([[1, np.nan], [0, 1], [1, 1], [1, 0]], float)
    assert rate(matrix) == pytest.approx(100 * (0.75 + 2 / 3) / 2)
    # Identical generators differ by exactly zero; a clear gap is outside the interval.
    assert paired_difference(wins, wins) == (0.0, 0.0, 0.0)
    better = np.maximum(wins, (rng.random(200) < 0.5).astype(float))
    delta, low, high = paired_difference(better, wins)
    assert delta > 0 and low > 0
    shuffled = rng.permutation(wins)  # the same rate, unrelated per mask
    delta, low, high = paired_difference(shuffled, wins)
    assert delta == 0 and low < 0 < high
    with pytest.raises(ValueError, match="same images"):
        paired_difference(wins, wins[:10])


def test_bad_input_names_the_file(tmp_path):
    manifest, triplets = make_sets(tmp_path, n=2)
    pd.read_parquet(manifest).drop(columns=["real_id"]).to_parquet(manifest)
    code = main(["metrics-generation", "--generator", "ccis", "--synthetic", str(manifest),
                 "--real", str(triplets), "--out", str(tmp_path / "m.json")])  # fmt: skip
    assert code == 2 and not (tmp_path / "m.json").exists()
    (tmp_path / "bad.json").write_text("{")
    assert main(["generation-table", "--out-csv", str(tmp_path / "t.csv"), "--out-md",
                 str(tmp_path / "t.md"), str(tmp_path / "bad.json")]) == 2  # fmt: skip
    with pytest.raises(ValueError, match="bad.json"):
        table1([tmp_path / "bad.json"], tmp_path / "t.csv", tmp_path / "t.md")


def test_mask_fidelity_with_a_saved_segmenter_folder(tmp_path):
    """load_segment builds the callable from a segmenter folder (random tiny PraNet)."""
    from safetensors.torch import save_file

    from ccis.metrics.fidelity import load_segment
    from ccis.segmentation.models import build_segmenter

    torch.manual_seed(0)
    folder = tmp_path / "segmenter"
    folder.mkdir()
    save_file(build_segmenter("pranet", "resnet10t").state_dict(), folder / "model.safetensors")
    (folder / "config.json").write_text(
        json.dumps({"model": "pranet", "backbone": "resnet10t", "size": 64})
    )
    make_sets(tmp_path, n=2)
    images = sorted((tmp_path / "synthetic" / "ccis" / "images").glob("*.png"))
    masks = sorted((tmp_path / "synthetic" / "ccis" / "masks").glob("*.png"))
    segment = load_segment(folder, batch_size=2)
    result, scores = mask_fidelity(images, masks, segment, segmenter=str(folder))
    assert 0.0 <= result.value <= 100.0 and len(scores) == 2
    assert isinstance(load_segment(None), NotComputed)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_segment(tmp_path / "nowhere")
