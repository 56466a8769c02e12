"""Training data for generators: the caption stage's image–mask–text triplets."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch

from ccis.common.images import read_bgr, read_gray


class TripletData:
    """Triplets resized to ``resolution``², kept in memory as uint8 once loaded.

    Images are resized whole (no crop) so the mask's polyp never leaves the frame;
    masks use nearest-neighbour resizing and stay binary.
    """

    def __init__(self, triplets: str | os.PathLike, resolution: int):
        self.path = Path(triplets)
        self.frame = pd.read_parquet(self.path).sort_values("id").reset_index(drop=True)
        if self.frame.empty:
            raise ValueError(f"{self.path}: no triplets to train on")
        self.resolution = resolution
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self.frame)

    @property
    def captions(self) -> list[str]:
        return self.frame["caption"].tolist()

    def pixels(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(RGB uint8 R×R×3, mask uint8 R×R in {0, 1}) of triplet ``index``."""
        if index not in self._cache:
            row = self.frame.iloc[index]
            image = read_bgr(self.path.parent / row["image"], self.path)
            mask = read_gray(self.path.parent / row["mask"], self.path)
            size = (self.resolution, self.resolution)
            image = cv2.cvtColor(
                cv2.resize(image, size, interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB
            )
            mask = (cv2.resize(mask, size, interpolation=cv2.INTER_NEAREST) > 127).astype(np.uint8)
            self._cache[index] = (image, mask)
        return self._cache[index]

    def batch(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        """Images in [-1, 1] (B, 3, R, R), masks in {0, 1} (B, 1, R, R), captions."""
        images, masks = zip(*(self.pixels(i) for i in indices), strict=True)
        image = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        mask = torch.from_numpy(np.stack(masks))[:, None].float()
        return image, mask, [self.frame.at[i, "caption"] for i in indices]


def batch_indices(step: int, batch_size: int, size: int, seed: int) -> list[int]:
    """The dataset indices of training step ``step``: a fresh seeded permutation per epoch.

    A pure function of its arguments, so a resumed run sees exactly the batches the
    killed one would have seen.
    """
    out = []
    for position in range(step * batch_size, (step + 1) * batch_size):
        epoch, offset = divmod(position, size)
        order = np.random.default_rng([seed, epoch]).permutation(size)
        out.append(int(order[offset]))
    return out


@torch.no_grad()
def encode_posteriors(
    vae,
    data: TripletData,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    batch_size: int = 32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every triplet's latent mean and std under the frozen ``vae``, in data order (float32,
    on the CPU; index them with a batch's indices).

    Images are resized whole, never augmented, so a frozen VAE gives each one the same
    posterior at every step: encoding the set once replaces an encoder pass per batch (a
    quarter of a tiny-preset training step; memory 8·h·w floats per image).
    """
    means, stds = [], []
    for first in range(0, len(data), batch_size):
        images, _, _ = data.batch(list(range(first, min(first + batch_size, len(data)))))
        posterior = vae.encode(images.to(device, dtype)).latent_dist
        means.append(posterior.mean.float().cpu())
        stds.append(posterior.std.float().cpu())
    return torch.cat(means), torch.cat(stds)
