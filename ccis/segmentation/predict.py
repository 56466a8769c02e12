"""Load a trained segmenter folder and predict polyp probabilities, as the references test.

Each image is resized to the training size (antialiased bilinear, as the references'
test loaders), ImageNet-normalised, passed through the network; the final logits
(PraNet: last map; Polyp-PVT: P1 + P2; PVT-CASCADE: P1 + P2 + P3 + P4) are resized back
to the image's own size (bilinear, ``align_corners=False``) and squashed with a sigmoid.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn

from ccis.common.images import resize_antialiased
from ccis.segmentation.data import to_tensor
from ccis.segmentation.layers import resize
from ccis.segmentation.models import build_segmenter
from ccis.segmentation.train import CONFIG, WEIGHTS

log = logging.getLogger(__name__)


def load_segmenter(folder: str | os.PathLike, device: str | torch.device = "cpu") -> nn.Module:
    """The trained segmenter in ``folder`` (``train_segmenter`` output), in eval mode.

    Its training configuration is attached as ``model.segmenter_config`` (a dict with
    ``model``, ``backbone``, ``size``, ...).
    """
    folder = Path(folder)
    config_path, weights = folder / CONFIG, folder / WEIGHTS
    for path in (config_path, weights):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: not found; is {folder} a trained segmenter?")
    try:
        config = json.loads(config_path.read_text())
        model = build_segmenter(config["model"], config["backbone"])
    except (json.JSONDecodeError, KeyError) as err:
        raise ValueError(f"{config_path}: not a segmenter configuration ({err})") from err
    try:
        model.load_state_dict(load_file(weights))
    except Exception as err:  # noqa: BLE001 - any failure means the weights do not fit
        raise ValueError(f"{weights}: weights do not fit {config['model']} ({err})") from err
    model.segmenter_config = config
    log.info("loaded %s (%s, %d px) from %s", config["model"], config["backbone"],
             config["size"], folder)  # fmt: skip
    return model.to(device).eval()


@torch.no_grad()
def predict_probabilities(
    model: nn.Module, images: list[np.ndarray], size: int | None = None, batch_size: int = 8
) -> list[np.ndarray]:
    """Polyp probability maps (H×W float32 in [0, 1]) of RGB uint8 ``images``.

    ``size`` is the network input size (default: the training size in the model's
    configuration); each map has its image's original size.
    """
    if size is None:
        size = int(getattr(model, "segmenter_config", {}).get("size", 352))
    model.eval()
    device = next(model.parameters()).device
    results: list[np.ndarray] = []
    for begin in range(0, len(images), batch_size):
        chunk = images[begin : begin + batch_size]
        for image in chunk:
            if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                raise ValueError(
                    f"predict_probabilities takes H×W×3 uint8 RGB images, got {image.shape} "
                    f"{image.dtype}"
                )
        resized = np.stack([resize_antialiased(im, size) for im in chunk])
        logits = model.final_logits(model(to_tensor(resized).to(device)))
        for image, logit in zip(chunk, logits, strict=True):
            full = resize(logit[None], image.shape[:2])[0, 0]
            results.append(torch.sigmoid(full).float().cpu().numpy())
    return results
