"""Training data of the segmenters: image–mask pairs from one or more manifests.

Real training manifests and synthetic ones (``synthetic/<gen>.parquet``) share the
manifest schema; paths in a manifest are relative to its folder. Pairs are decoded once,
resized to the training size with antialiasing (PIL bilinear, as the references'
torchvision ``Resize`` on PIL images) and kept in memory as uint8. Masks stay *soft*
after resizing (the references' ``ToTensor`` of the resized mask: edge pixels between 0
and 1), or are binarised at 128 with ``soft_masks=False``. No augmentation (the
references train without it).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ccis.common.images import read_gray, read_rgb, resize_antialiased
from ccis.data.manifest import read_manifest

log = logging.getLogger(__name__)

# ImageNet statistics: both reference repositories normalise with them.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def manifest_pairs(manifest: str | os.PathLike) -> list[tuple[str, Path, Path]]:
    """(id, image path, mask path) of every row, paths resolved against the manifest."""
    manifest = Path(manifest)
    frame = read_manifest(manifest)
    root = manifest.parent
    return [
        (str(row.id), root / str(row.image), root / str(row.mask))
        for row in frame.itertuples(index=False)
    ]


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """N×H×W×3 uint8 RGB → N×3×H×W float, ImageNet-normalised."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (x - mean) / std


class SegmentationData:
    """All pairs of ``manifests``, resized to ``size``×``size``, in memory."""

    def __init__(self, manifests: list[str | os.PathLike], size: int, soft_masks: bool = True):
        if not manifests:
            raise ValueError("no training manifest given")
        pairs = [p for m in manifests for p in manifest_pairs(m)]
        if not pairs:
            raise ValueError(f"{', '.join(map(str, manifests))}: no image–mask pairs")
        self.size = size
        self.ids = [p[0] for p in pairs]
        self.images = np.empty((len(pairs), size, size, 3), np.uint8)
        self.masks = np.empty((len(pairs), size, size), np.uint8)
        for i, (_, image_path, mask_path) in enumerate(pairs):
            image, mask = read_rgb(image_path), read_gray(mask_path)
            if image.shape[:2] != mask.shape:
                raise ValueError(
                    f"{mask_path}: mask is {mask.shape[1]}×{mask.shape[0]} but its image "
                    f"{image_path} is {image.shape[1]}×{image.shape[0]}"
                )
            self.images[i] = resize_antialiased(image, size)
            small = resize_antialiased(mask, size)
            self.masks[i] = small if soft_masks else np.where(small >= 128, 255, 0)
        log.info(
            "read %d pairs from %s at %d×%d (%.0f MiB in memory)",
            len(pairs), ", ".join(map(str, manifests)), size, size,
            (self.images.nbytes + self.masks.nbytes) / 2**20,
        )  # fmt: skip

    def __len__(self) -> int:
        return len(self.ids)

    def batch(self, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised images N×3×S×S and masks N×1×S×S in [0, 1] (float)."""
        images = to_tensor(self.images[indices])
        masks = torch.from_numpy(self.masks[indices]).unsqueeze(1).float() / 255
        return images, masks


def epoch_batches(count: int, batch_size: int, seed: int, epoch: int) -> list[np.ndarray]:
    """The shuffled batches of ``epoch`` (last one may be smaller): a function of
    (seed, epoch) only, so a resumed run sees the same order as an uninterrupted one."""
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(count)
    return [order[i : i + batch_size] for i in range(0, count, batch_size)]


def scale_sizes(size: int, scales: list[float]) -> list[int]:
    """Training sizes of the multi-scale rates, as the references round them.

    ``int(round(size·rate/32)·32)`` with Python's round (halves to even), so at small
    sizes several rates can fall on the same size; no size is below 32.
    """
    return [max(32, int(round(size * rate / 32) * 32)) for rate in scales]


def rescale(
    images: torch.Tensor, masks: torch.Tensor, size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Bilinear resize of a batch (masks become soft at the edges, as in the references)."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images, masks

    def up(t: torch.Tensor) -> torch.Tensor:
        return F.interpolate(t, size=(size, size), mode="bilinear", align_corners=True)

    return up(images), up(masks)
