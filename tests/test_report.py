"""Report stage: Fig. 3/4 grids on a tiny base, loss and segmentation figures, the
self-contained HTML page, and the page as headless Chromium renders it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from conftest import run_env

CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def branches(base, tmp_path_factory) -> dict[str, Path]:
    """Untrained ccis and controlnet branches with their zero outputs perturbed (so each
    steers the UNet differently), each with a loss log."""
    from ccis.diffusion.presets import load_sd15
    from ccis.generator.registry import build_branch

    root = tmp_path_factory.mktemp("branches")
    unet = load_sd15(base)["unet"]
    out = {}
    for k, gen in enumerate(("ccis", "controlnet")):
        branch = build_branch(gen, unet, conditioning_embedding_out_channels=(4, 4, 4, 4))
        generator = torch.Generator().manual_seed(k)
        with torch.no_grad():
            for p in branch.parameters():
                if p.abs().max() == 0:
                    p.add_(0.2 * torch.randn(p.shape, generator=generator))
        branch.save_pretrained(root / gen)
        steps = np.arange(1, 41)
        loss = 0.5 / np.sqrt(steps) + 0.05 * np.random.default_rng(k).random(40)
        pd.DataFrame({"step": steps, "loss": loss}).to_csv(root / gen / "loss.csv", index=False)
        out[gen] = root / gen
    return out


def ccis_cli(*args: str) -> subprocess.CompletedProcess:
    """The ``ccis`` command in a subprocess (the real entry point)."""
    return subprocess.run([sys.executable, "-m", "ccis.cli", *args], env=run_env(),
                          capture_output=True, text=True, timeout=300)  # fmt: skip


def ccis_main(capsys, *args: str) -> tuple[int, str]:
    """``ccis`` in this process (saves the subprocess's start-up): exit code and its log."""
    from ccis.cli import main

    capsys.readouterr()
    code = main(list(args))
    return code, capsys.readouterr().err


def test_prompt_variants_swap_one_attribute():
    from ccis.report.grids import prompt_variants

    caption = "A small red polyp, round and flat, with a smooth surface, against pink mucosa."
    variants = dict(prompt_variants(caption, {"colour": "red", "texture": "smooth"}, count=5))
    assert variants["caption"] == caption
    assert variants["colour=pale"].startswith("A small pale polyp")
    assert variants["colour=pink"].endswith("against pink mucosa.")  # background untouched
    assert "rough surface" in variants["texture=rough"] and len(variants) == 5


def test_prompt_variants_from_attributes_when_the_caption_names_none(triplets):
    from ccis.report.grids import choose_rows, prompt_variants

    record = pd.read_parquet(triplets).iloc[0]
    variants = prompt_variants("A polyp.", record["attributes"], record["id"], count=3)
    # The template captioner re-phrases the measured attributes with one colour swapped.
    assert [name for name, _ in variants][0] == "caption" and len(variants) == 3
    assert all(name.startswith("colour=") for name, _ in variants[1:])
    rows = choose_rows(triplets, n_masks=2, prompts_per_mask=4, resolution=32, seed=7)
    assert len(rows) == 8 and [r.seed for r in rows] == [7] * 4 + [8] * 4
    assert len({r.prompt for r in rows}) == 8 and rows[0].mask.shape == (32, 32)


def test_figure_grid_on_tiny_branches(base, branches, triplets, tmp_path):
    from ccis.report.grids import choose_rows, generate_columns

    out = tmp_path / "fig3.png"
    args = ["figure-grid", "--base", str(base), "--triplets", str(triplets), "--out", str(out),
            "--masks", "2", "--prompts-per-mask", "2", "--steps", "2", "--guidance-scale", "7",
            "--resolution", "32", "--seed", "5", "--threads", "1", "--tile", "64"]  # fmt: skip
    for gen, folder in branches.items():
        args += ["--branch", f"{gen}={folder}"]
    proc = ccis_cli(*args)
    assert proc.returncode == 0, proc.stderr
    assert f"wrote {out}" in proc.stderr and "seed 6 [caption]" in proc.stderr
    # 4 rows (2 masks × 2 prompts), 2 generators, 64-px tiles: pad 8, text column 320 px.
    width, height = Image.open(out).size
    assert (width, height) == (8 + 72 + 328 + 2 * 72, 40 + 4 * 72 + 8)

    # Same mask ⇒ same noise: the same branch under two names draws identical images;
    # another branch (or another prompt) draws different ones.
    rows = choose_rows(triplets, 1, 2, 32, seed=5)
    same = generate_columns(base, {"a": branches["ccis"], "b": branches["ccis"],
                                   "c": branches["controlnet"]}, rows, steps=2)  # fmt: skip
    np.testing.assert_array_equal(same["a"], same["b"])
    assert not np.allclose(same["a"], same["c"]) and not np.allclose(same["a"][0], same["a"][1])


def test_figure_grid_names_a_missing_branch(base, triplets, tmp_path, capsys):
    code, err = ccis_main(capsys, "figure-grid", "--base", str(base), "--triplets", str(triplets),
                    "--out", str(tmp_path / "x.png"), "--branch", f"ccis={tmp_path / 'nope'}")  # fmt: skip
    assert code == 2 and f"{tmp_path / 'nope'}: branch 'ccis' is not a trained branch" in err


def test_loss_figure(branches, tmp_path):
    from ccis.report.figures import plot_losses

    out = plot_losses(branches, tmp_path / "losses.png")
    assert Image.open(out).size == (800, 450)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "loss.csv").write_text("step,value\n1,2\n")
    with pytest.raises(ValueError, match=r"bad/loss.csv: loss log lacks columns \['loss'\]"):
        plot_losses({"x": bad}, tmp_path / "never.png")
    assert not (tmp_path / "never.png").exists()


def _segmentation_parquets(root: Path) -> list[Path]:
    """Two models × two settings × three seeds × two test sets × five images."""
    rng = np.random.default_rng(0)
    paths = []
    for model in ("pranet", "pvt"):
        for setting in ("real", "ccis"):
            for seed in range(3):
                rows = [
                    {"model": model, "setting": setting, "seed": seed, "test_set": test_set,
                     "id": f"{test_set}-{i}", "mdice": 0.8 + 0.05 * rng.random(),
                     "miou": 0.7, "dice": 0.8, "iou": 0.7}
                    for test_set in ("kvasir", "clinicdb") for i in range(5)
                ]  # fmt: skip
                path = root / model / setting / f"seed{seed}.parquet"
                path.parent.mkdir(parents=True, exist_ok=True)
                pd.DataFrame(rows).to_parquet(path)
                paths.append(path)
    return paths


def test_segmentation_bars_average_images_then_seeds(tmp_path, capsys):
    from ccis.report.figures import plot_segmentation

    paths = _segmentation_parquets(tmp_path)
    out = tmp_path / "bars.png"
    summary = plot_segmentation(paths, out)
    assert out.is_file() and len(summary) == 2 * 2 * 2 and (summary["seeds"] == 3).all()
    data = pd.concat(pd.read_parquet(p) for p in paths)
    part = data[(data.model == "pvt") & (data.setting == "ccis") & (data.test_set == "kvasir")]
    per_seed = part.groupby("seed")["mdice"].mean()
    row = summary[(summary.model == "pvt") & (summary.setting == "ccis")
                  & (summary.test_set == "kvasir")].iloc[0]  # fmt: skip
    assert row["mean"] == pytest.approx(per_seed.mean())
    assert row["std"] == pytest.approx(per_seed.std(ddof=1))
    # The same file twice repeats every image: an error naming the file.
    code, err = ccis_main(capsys, "figure-segmentation", "--out", str(tmp_path / "x.png"),
                          str(paths[0]), str(paths[0]))  # fmt: skip
    assert code == 2 and "appears more than once" in err and str(paths[0]) in err
    assert not (tmp_path / "x.png").exists()


def _sample_report(root: Path, capsys) -> Path:
    """A report with two tables (one with 'not computed' cells and a footnote), two
    figures, one missing table and one missing figure."""
    from ccis.report.figures import plot_segmentation

    tables = root / "tables"
    tables.mkdir(parents=True)
    (tables / "table1_generation.csv").write_text(
        "method,FID,CLIP-score,CLIP-image\n"
        "ControlNet,not computed,21.3,70.2\nUni-ControlNet,not computed,20.9,69.8\n"
        "CCIS-Diff (ours),not computed,22.4,71.5\n"
    )
    (tables / "table1_generation.md").write_text(
        "| method | FID | CLIP-score | CLIP-image |\n|---|---|---|---|\n"
        "| ControlNet | not computed | 21.3 | 70.2 |\n\n"
        "FID not computed: clean-fid's Inception weights are not available offline.\n"
    )
    (tables / "table3_segmentation.md").write_text(
        "# Table 3\n\n| setting | Kvasir mDice |\n|:--|--:|\n| PraNet | 86.1 ± 0.3 |\n"
        "| PraNet + Ours | 88.5 ± 0.4 |\n\nMean ± std over 3 seeds.\n"
    )
    bars = root / "bars.png"
    plot_segmentation(_segmentation_parquets(root / "seg"), bars)
    photo = root / "fig3.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (60, 90, 3), np.uint8)).save(photo)
    config = root / "config.yaml"
    config.write_text("results: results\nmodel: {preset: tiny}\nnote: <b>escaped</b>\n")
    args = [
        "report", "--out", str(root / "report"), "--config", str(config),
        "--table", f"Table 1: generation={tables / 'table1_generation.csv'}",
        "--table", f"Table 3: segmentation={tables / 'table3_segmentation.md'}",
        "--table", f"Table 2: user study={tables / 'missing.csv'}",
        "--figure", f"Fig. 3: generators={photo}", "--caption", "Fig. 3: generators=Masks × prompts",
        "--figure", f"Segmentation={bars}", "--figure", f"Fig. 4: ablation={root / 'nofig.png'}",
    ]  # fmt: skip
    code, err = ccis_main(capsys, *args)
    assert code == 0, err
    assert "not produced, listed as such: Table 2: user study, Fig. 4: ablation" in err
    return root / "report" / "index.html"


def test_report_is_one_self_contained_page(tmp_path, capsys):
    index = _sample_report(tmp_path, capsys)
    assert sorted(p.name for p in index.parent.iterdir()) == ["index.html"]
    page = index.read_text()
    # Nothing outside the page: every src/href is a data URI or an in-page anchor.
    refs = re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', page)
    assert len(refs) == 2 and all(r.startswith("data:image/png;base64,") for r in refs)
    assert "http" not in page.replace("http-equiv", "") and "<link" not in page
    assert "url(" not in page and "@import" not in page
    from ccis.report.html import is_missing

    assert is_missing("not computed¹") and is_missing("N/A") and not is_missing("86.1 ± 0.3")
    assert page.count('<td class="missing">not computed</td>') == 3
    assert "FID not computed: clean-fid&#x27;s Inception weights" in page
    assert "Mean ± std over 3 seeds." in page and "88.5 ± 0.4" in page
    assert "note: &lt;b&gt;escaped&lt;/b&gt;" in page  # the config, escaped
    assert page.count("not produced") == 2
    # Fixed stamp and versions: the same inputs give the same bytes.
    from ccis.report.html import build_report

    again = [build_report(tmp_path / f"r{k}", [("T", tmp_path / "tables" / "table1_generation.csv")],
                          [("F", tmp_path / "fig3.png", "c")], tmp_path / "config.yaml",
                          versions=[("ccis", "0")], generated="today").read_bytes()
             for k in range(2)]  # fmt: skip
    assert again[0] == again[1]
    for name in ("python", "torch", "diffusers", "transformers", "accelerate", "timm",
                 "open_clip", "clean-fid", "snakemake", "ccis", "git commit"):  # fmt: skip
        assert f"<tr><th>{name}</th>" in page


def test_table_notes_keep_their_lists_and_paragraphs():
    """Table 1's notes hold Markdown lists (ablations, not-computed reasons): on the page
    they are lists, not lines that start with a dash."""
    from ccis.report.html import notes_html

    notes = ["Each ablation removes one thing:", "- w/o TAAM: the <bias>", "- w/o BMWS: x",
             "Not computed:", "- [1] no weights"]  # fmt: skip
    assert notes_html(notes) == (
        "<p>Each ablation removes one thing:</p>"
        "<ul><li>w/o TAAM: the &lt;bias&gt;</li><li>w/o BMWS: x</li></ul>"
        "<p>Not computed:</p><ul><li>[1] no weights</li></ul>"
    )
    assert notes_html(["one line"]) == "<p>one line</p>"


def _chromium(*args: str, profile: Path) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}"]  # fmt: skip
    return subprocess.run([str(CHROMIUM), *flags, *args], capture_output=True, text=True,
                          timeout=120)  # fmt: skip


@pytest.mark.skipif(not CHROMIUM.is_file(), reason=f"{CHROMIUM} is not installed (apt chromium)")
def test_report_renders_in_headless_chromium(tmp_path, capsys):
    index = _sample_report(tmp_path, capsys)
    # A copy with a probe: after load, it records on <body> how many images decoded.
    probe = (
        "<script>window.addEventListener('load', () => {"
        "const imgs = [...document.images];"
        "document.body.dataset.images = imgs.length;"
        "document.body.dataset.decoded = imgs.filter(i => i.complete && i.naturalWidth > 0)"
        ".length;"
        "document.body.dataset.rows = [...document.querySelectorAll('table')]"
        ".map(t => t.tBodies.length ? t.tBodies[0].rows.length : t.rows.length).join(',');"
        "});</script>"
    )
    probed = index.with_name("probed.html")
    probed.write_text(index.read_text().replace("</body>", probe + "</body>"))
    dom = _chromium("--virtual-time-budget=5000", "--dump-dom", probed.as_uri(),
                    profile=tmp_path / "profile1")  # fmt: skip
    body = re.search(r"<body[^>]*>", dom.stdout)
    assert body, dom.stderr[-2000:]
    attrs = dict(re.findall(r'data-(\w+)="([^"]*)"', body.group(0)))
    assert attrs == {"images": "2", "decoded": "2", "rows": "3,2,11"}, body.group(0)

    shot = tmp_path / "report.png"
    proc = _chromium(f"--screenshot={shot}", "--window-size=1280,2000", index.as_uri(),
                     profile=tmp_path / "profile2")  # fmt: skip
    assert shot.is_file(), proc.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert pixels.shape == (2000, 1280) and pixels.std() > 10
