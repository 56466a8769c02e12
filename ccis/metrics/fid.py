"""FID between the synthetic images and the real training images, with clean-fid.

clean-fid resizes every image to 299×299 (PIL bicubic on float pixels, mode "clean"),
so sets of different image sizes compare fairly. Its Inception network is a TorchScript
file that clean-fid downloads into a fixed cache folder (``/tmp`` on Linux and macOS,
the working folder on Windows: ``cleanfid.features.feature_extractor``) the first time it
is needed. We never let it download: we look for the file ourselves and, when it is
absent, report FID as not computed. When it is present we load it with clean-fid's own
wrapper (``InceptionV3W(..., download=False)``) and run clean-fid's feature and
Fréchet-distance code on the two file lists. Mode ``legacy_pytorch`` (pytorch-fid's
port of the network) is looked up the same way, in torch.hub's checkpoints folder.
"""

from __future__ import annotations

import logging
import os
import platform
from collections.abc import Callable, Sequence
from pathlib import Path

from ccis.metrics.base import NotComputed, Result, finite

log = logging.getLogger(__name__)

INCEPTION_FILE = "inception-2015-12-05.pt"  # clean-fid's name for the StyleGAN2 Inception
# legacy_pytorch's weights (pytorch-fid's port), cached by torch.hub under checkpoints/.
PT_INCEPTION_FILE = "pt_inception-2015-12-05-6726825d.pth"
FID_MODES = ("clean", "legacy_tensorflow", "legacy_pytorch")
# FID compares covariance matrices: fewer than two images per set give none.
MIN_IMAGES = 2


def default_inception_dir(mode: str = "clean") -> Path:
    """The folder clean-fid downloads its Inception weights into (and loads them from).

    For ``legacy_pytorch`` it is torch.hub's folder (the file lies in its checkpoints/).
    """
    if mode == "legacy_pytorch":
        import torch

        return Path(torch.hub.get_dir())
    return Path("./" if platform.system() == "Windows" else "/tmp")


def find_inception(
    inception_dir: str | os.PathLike | None = None, mode: str = "clean"
) -> Path | NotComputed:
    """The local Inception weight file, or why FID cannot be computed. Never downloads."""
    folder = Path(inception_dir) if inception_dir is not None else default_inception_dir(mode)
    if mode == "legacy_pytorch":
        path, source = folder / "checkpoints" / PT_INCEPTION_FILE, "github.com/mseitzer/pytorch-fid"
    else:
        path, source = folder / INCEPTION_FILE, "nvlabs-fi-cdn.nvidia.com"
    if not path.is_file():
        return NotComputed(
            f"clean-fid's Inception weights are not available offline ({path} is missing; "
            f"clean-fid would download them from {source}, which this run does not do: "
            "place the file there to compute FID)"
        )
    return path


def inception_extractor(
    weights: str | os.PathLike, mode: str = "clean", device: str = "cpu"
) -> Callable:
    """clean-fid's Inception feature function, loaded from a local ``weights`` file.

    The returned callable takes a float batch in [0, 255] (N×3×299×299) and returns
    N×2048 features, as ``cleanfid.features.feature_extractor`` does.
    """
    import torch

    weights = Path(weights)
    try:
        if mode == "legacy_pytorch":
            from cleanfid.inception_pytorch import InceptionV3

            # torch.hub loads the cached file found under <hub>/checkpoints/ (no request).
            previous = torch.hub.get_dir()
            torch.hub.set_dir(str(weights.parent.parent))
            try:
                model = InceptionV3(output_blocks=[3], resize_input=False)
            finally:
                torch.hub.set_dir(previous)
        else:
            from cleanfid.inception_torchscript import InceptionV3W

            # download=False: clean-fid's wrapper then only loads the file we found.
            model = InceptionV3W(
                str(weights.parent), download=False, resize_inside=mode == "legacy_tensorflow"
            )
    except Exception as err:  # torch.jit, pickle and state-dict errors alike: a bad file
        raise ValueError(f"{weights}: cannot load clean-fid's Inception network ({err})") from err
    model = model.to(torch.device(device)).eval()

    def features(batch):
        if mode == "legacy_pytorch":  # as cleanfid.features.feature_extractor does
            return model(batch / 255)[0].squeeze(-1).squeeze(-1)
        return model(batch)

    return features


def compute_fid(
    synthetic: Sequence[str | os.PathLike],
    real: Sequence[str | os.PathLike],
    *,
    feature_extractor: Callable | None = None,
    extractor_name: str | None = None,
    inception_dir: str | os.PathLike | None = None,
    mode: str = "clean",
    batch_size: int = 32,
    num_workers: int = 0,
    device: str = "cpu",
) -> Result:
    """FID between image files ``synthetic`` and ``real`` (lower is better).

    ``feature_extractor`` replaces Inception (clean-fid's ``custom_feat_extractor``: a
    callable from an N×3×299×299 float batch in [0, 255] to N×D features); without it the
    Inception file is looked up in ``inception_dir`` (default: clean-fid's cache folder).
    """
    import torch
    from cleanfid import fid as cfid

    if mode not in FID_MODES:
        raise ValueError(f"FID mode must be one of {FID_MODES}, got {mode!r}")
    if min(len(synthetic), len(real)) < MIN_IMAGES:
        return NotComputed(
            f"FID needs at least {MIN_IMAGES} images per set "
            f"({len(synthetic)} synthetic, {len(real)} real)"
        )
    if feature_extractor is None:
        found = find_inception(inception_dir, mode)
        if isinstance(found, NotComputed):
            log.warning("FID not computed: %s", found.reason)
            return found
        feature_extractor = inception_extractor(found, mode, device)
        extractor_name = f"Inception-v3 (clean-fid, {found})"
    name = extractor_name or getattr(feature_extractor, "__name__", "custom")

    def features(files: Sequence[str | os.PathLike], what: str):
        # clean-fid's own loader: PIL RGB read, its resize for ``mode``, batches to device.
        return cfid.get_files_features(
            [str(f) for f in files], feature_extractor, num_workers=num_workers,
            batch_size=batch_size, device=torch.device(device), mode=mode,
            description=f"FID features {what}", verbose=True,
        )  # fmt: skip

    log.info(
        "FID (%s mode, %s): %d synthetic vs %d real images",
        mode, name, len(synthetic), len(real),
    )  # fmt: skip
    synthetic_features = features(synthetic, "synthetic")
    real_features = features(real, "real")
    # FID is a squared distance; round-off can leave identical sets at -1e-8 or so.
    value = max(float(cfid.fid_from_feats(synthetic_features, real_features)), 0.0)
    details = {
        "mode": mode,
        "feature_extractor": name,
        "feature_dim": int(synthetic_features.shape[1]),
        "n_synthetic": len(synthetic),
        "n_real": len(real),
    }
    if min(len(synthetic), len(real)) <= synthetic_features.shape[1]:
        # Fewer images than feature dimensions: the covariances are rank-deficient and
        # FID is biased upwards; comparable only between sets of the same size.
        details["note"] = (
            f"fewer images than feature dimensions ({synthetic_features.shape[1]}): "
            "FID is biased upwards; compare only sets of equal size"
        )
    result = finite(value, "FID", details)
    log.info("FID = %s", f"{value:.3f}")
    return result
