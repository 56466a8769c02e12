"""Find image–mask pairs in the folder layouts the public polyp data sets ship in.

Each layout names where its images and masks live and how a mask's file name relates to
its image's. :func:`discover` lists the pairs of one data-set folder and reports every
problem it finds on the way (unpaired files, two files for one id, links that leave the
data-set root) instead of stopping at the first.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


@dataclass(frozen=True)
class RawPair:
    """One image–mask pair found on disk, before decoding."""

    id: str
    source: str
    image: Path
    mask: Path


@dataclass(frozen=True)
class Problem:
    """A file that cannot be used, with the reason."""

    path: Path
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


@dataclass(frozen=True)
class Layout:
    """Where one data set keeps its files.

    ``folders`` lists (image folder, mask folder, mask-name prefix) candidates relative
    to the root, tried in order; the first whose two folders exist is used.
    """

    name: str
    source: str
    folders: tuple[tuple[str, str, str], ...]
    description: str
    source_of: Callable[[str, str], str] | None = None


def _pranet_source(default: str, stem: str) -> str:
    # PraNet's TrainDataset mixes Kvasir-SEG (hash-like names) and CVC-ClinicDB
    # (numbered frames); keep them apart so ids stay unique and traceable.
    if default != "pranet-train":
        return default
    return "clinicdb" if stem.isdigit() else "kvasir"


LAYOUTS: dict[str, Layout] = {
    layout.name: layout
    for layout in (
        Layout(
            "pranet",
            "pranet",
            (("images", "masks", ""),),
            "PraNet split: TrainDataset/ or TestDataset/<name>/, each with images/ and masks/",
            _pranet_source,
        ),
        Layout(
            "kvasir-seg",
            "kvasir",
            (("images", "masks", ""),),
            "Kvasir-SEG: images/*.jpg and masks/*.jpg (JPEG masks, thresholded at 128)",
        ),
        Layout(
            "cvc-clinicdb",
            "clinicdb",
            (
                ("PNG/Original", "PNG/Ground Truth", ""),
                ("Original", "Ground Truth", ""),
                ("TIF/Original", "TIF/Ground Truth", ""),
                ("images", "masks", ""),
            ),
            "CVC-ClinicDB: Original/ and 'Ground Truth'/ (.tif or .png, 384×288), "
            "optionally under PNG/ or TIF/",
        ),
        Layout(
            "cvc-300",
            "cvc300",
            (("images", "masks", ""), ("bbdd", "gtpolyp", "")),
            "CVC-300 / EndoScene test set: images/ and masks/, or EndoScene's bbdd/ and gtpolyp/",
        ),
        Layout(
            "cvc-colondb",
            "colondb",
            (("images", "masks", ""), ("", "", "p")),
            "CVC-ColonDB: images/ and masks/, or one folder with N.tiff and pN.tiff",
        ),
        Layout(
            "etis",
            "etis",
            (
                ("images", "masks", ""),
                ("ETIS-LaribPolypDB", "GroundTruth", "p"),
                ("", "GroundTruth", "p"),
            ),
            "ETIS-LaribPolypDB: images/ and masks/, or ETIS-LaribPolypDB/ with GroundTruth/pN.tif",
        ),
        # What other tools write (a generator's synthetic set, any image–mask pairs):
        # pairs told apart by file stem only. Name the source in the config.
        Layout(
            "image-mask",
            "pairs",
            (("images", "masks", ""), ("image", "mask", ""), ("imgs", "masks", "")),
            "any tool's image–mask pairs: images/ and masks/ (or image/ and mask/, imgs/ "
            "and masks/), a mask per image with the same file stem",
        ),
    )
}

_ID_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def make_id(source: str, stem: str) -> str:
    """Stable, file-name-safe pair id: ``<source>-<stem>``."""
    return f"{source}-{_ID_UNSAFE.sub('_', stem)}"


def _files(folder: Path) -> list[Path]:
    """The image files of ``folder``; any other file is logged by name and left out."""
    images, stray = [], []
    for p in folder.iterdir():
        if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."):
            images.append(p)
        elif not p.is_dir():
            stray.append(p.name)
    if stray:
        log.warning(
            "%s: ignored %d file(s) that are not images (%s): %s",
            folder, len(stray), "/".join(sorted(IMAGE_SUFFIXES)), ", ".join(sorted(stray)),
        )  # fmt: skip
    return sorted(images)


def _escapes(path: Path, root: Path) -> bool:
    """True when ``path`` (after following links) lies outside ``root``."""
    try:
        Path(os.path.realpath(path)).relative_to(root)
    except ValueError:
        return True
    return False


def resolve_layout(fmt: str, root: Path) -> tuple[Layout, Path, Path, str]:
    """Pick the layout variant present under ``root``: (layout, image dir, mask dir, prefix)."""
    if fmt not in LAYOUTS:
        raise ValueError(f"unknown data-set format {fmt!r}; known: {', '.join(sorted(LAYOUTS))}")
    layout = LAYOUTS[fmt]
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: data-set folder ({fmt}) does not exist")
    for image_sub, mask_sub, prefix in layout.folders:
        image_dir, mask_dir = root / image_sub, root / mask_sub
        if image_dir.is_dir() and mask_dir.is_dir() and (image_sub != mask_sub or prefix):
            return layout, image_dir, mask_dir, prefix
    tried = "; ".join(
        f"{i or '.'}/ + {m or '.'}/" + (f" (masks named {p}<id>)" if p else "")
        for i, m, p in layout.folders
    )
    raise FileNotFoundError(
        f"{root}: not a {fmt} folder ({layout.description}); looked for {tried}"
    )


def discover(
    fmt: str, root: str | os.PathLike, source: str | None = None
) -> tuple[list[RawPair], list[Problem]]:
    """List the pairs of one data-set folder and every problem found.

    ``source`` overrides the id prefix (by default the data set's short name).
    """
    root = Path(root)
    layout, image_dir, mask_dir, prefix = resolve_layout(fmt, root)
    real_root = Path(os.path.realpath(root))
    default_source = source or layout.source
    if fmt == "pranet" and not source:
        # TrainDataset is split into its two sources by name; a TestDataset/<name> folder
        # is named after itself (CVC-300 -> cvc-300), as its numbered files would clash.
        is_train = root.name.lower() == "traindataset"
        default_source = "pranet-train" if is_train else make_id(root.name.lower(), "")[:-1]
    problems: list[Problem] = []

    def index(paths: list[Path], strip: str) -> dict[str, Path]:
        by_stem: dict[str, list[Path]] = {}
        for path in paths:
            if _escapes(path, real_root):
                problems.append(
                    Problem(
                        path,
                        f"is a link to {os.path.realpath(path)}, outside the data-set root {root}",
                    )
                )
                continue
            stem = path.stem
            if strip:
                if not stem.startswith(strip):
                    problems.append(
                        Problem(
                            path,
                            f"mask name does not start with {strip!r}, as this layout's masks do",
                        )
                    )
                    continue
                stem = stem[len(strip) :]
            by_stem.setdefault(stem, []).append(path)
        for stem, group in by_stem.items():
            if len(group) > 1:
                names = ", ".join(p.name for p in group)
                problems.append(Problem(group[0].parent, f"several files for id {stem!r}: {names}"))
        return {stem: group[0] for stem, group in by_stem.items() if len(group) == 1}

    image_files = _files(image_dir)
    mask_files = _files(mask_dir) if mask_dir != image_dir else []  # (stray files: log once)
    if image_dir == mask_dir:  # one flat folder: masks are the prefixed files
        mask_set = {
            p
            for p in image_files
            if p.stem.startswith(prefix) and p.stem[len(prefix) :] in {q.stem for q in image_files}
        }
        image_files = [p for p in image_files if p not in mask_set]
        mask_files = sorted(mask_set)
    images = index(image_files, "")
    masks = index(mask_files, prefix)

    pairs: list[RawPair] = []
    for stem in sorted(images.keys() | masks.keys()):
        if stem not in masks:
            problems.append(Problem(images[stem], f"image has no mask in {mask_dir}"))
            continue
        if stem not in images:
            problems.append(Problem(masks[stem], f"mask has no image in {image_dir}"))
            continue
        src = layout.source_of(default_source, stem) if layout.source_of else default_source
        pairs.append(RawPair(make_id(src, stem), src, images[stem], masks[stem]))
    return pairs, problems
