"""CLIP-score and CLIP-image with open_clip, loaded only from local files.

- CLIP-score = mean over images of ``max(100 · cos(E_image, E_caption), 0)``: the
  definition of torchmetrics' ``CLIPScore`` (Hessel et al.'s CLIPScore with the weight
  100 instead of 2.5), the scale on which the paper reports 30.6–32.0. Range [0, 100].
- CLIP-image = mean over synthetic images of ``100 · cos(E_synthetic, E_source)``, the
  similarity to the real image whose mask and caption conditioned it (ControlNet's and
  the paper's "CLIP-image"). Not clipped: range [-100, 100].

The model comes from ``pretrained``, either a checkpoint file or an open_clip pretrained
tag. A tag is resolved to the file open_clip would have downloaded, looked up in its
local caches only (the Hugging Face hub cache, or ``~/.cache/clip`` for URL weights);
when absent, the metrics are reported as not computed. Model creation runs with the
Hugging Face hub in offline mode, so nothing is ever fetched. ``model_name`` may be a
built-in open_clip name, a path to a model-config JSON file (registered with
``open_clip.add_model_config``; its file stem is the model name), or ``local-dir:FOLDER``.

Captions longer than the text encoder's context (77 tokens for CLIP) are truncated by the
tokenizer, as at generation time; how many were is counted and reported.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ccis.metrics.base import Computed, NotComputed, Result

log = logging.getLogger(__name__)

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt", ".npz")
# open_clip's default file name of a hub repo's weights (open_clip.constants.HF_WEIGHTS_NAME).
HF_WEIGHTS_NAME = "open_clip_pytorch_model.bin"


@dataclass
class ClipModel:
    """A loaded open_clip model with its image transform and tokenizer."""

    model: Any
    preprocess: Any
    tokenizer: Any
    context_length: int
    name: str
    weights: str
    device: str

    def describe(self) -> dict:
        return {"model": self.name, "weights": self.weights}


@contextlib.contextmanager
def hub_offline() -> Iterator[None]:
    """Hugging Face hub and transformers in offline mode: cache hits only, no requests."""
    keys = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    saved = {k: os.environ.get(k) for k in keys}
    for key in keys:
        os.environ[key] = "1"
    constants = None
    # huggingface_hub reads the variable once, at import: set its constant as well.
    with contextlib.suppress(ImportError):  # open_clip's hub support is optional
        from huggingface_hub import constants
    old = getattr(constants, "HF_HUB_OFFLINE", None)
    if constants is not None:
        constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        if constants is not None:
            constants.HF_HUB_OFFLINE = old
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _looks_like_path(text: str) -> bool:
    return os.sep in text or "/" in text or text.lower().endswith(CHECKPOINT_SUFFIXES)


def cached_tag_weights(
    model_name: str, tag: str, cache_dir: str | os.PathLike | None = None
) -> Path | NotComputed:
    """The local file of open_clip pretrained ``tag`` for ``model_name``; never downloads.

    Mirrors ``open_clip.pretrained.download_pretrained``: a configured file, else the hub
    file (its ``.safetensors`` alternative first), else the URL's file in the cache folder.
    """
    import open_clip

    cfg = open_clip.get_pretrained_cfg(model_name, tag)
    if not cfg:
        tags = open_clip.list_pretrained_tags_by_model(model_name)
        return NotComputed(
            f"CLIP weights {tag!r}: neither an existing checkpoint file nor a pretrained tag "
            f"of {model_name} (its tags: {', '.join(tags) or 'none'})"
        )
    if cfg.get("file"):
        path = Path(cfg["file"])
        return path if path.is_file() else NotComputed(f"CLIP weights file {path} is missing")
    looked: list[str] = []
    hub = cfg.get("hf_hub", "")
    if hub:
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:
            try_to_load_from_cache = None
        if try_to_load_from_cache is not None:
            repo, filename = os.path.split(hub)
            filename = filename or HF_WEIGHTS_NAME
            candidates = [filename]
            if filename.endswith((".bin", ".pth")):
                candidates.insert(0, filename[:-4] + ".safetensors")
            for name in candidates:
                found = try_to_load_from_cache(repo, name, cache_dir=cache_dir)
                if isinstance(found, str) and Path(found).is_file():
                    return Path(found)
                looked.append(f"hf-hub {repo}/{name}")
    url = cfg.get("url", "")
    if url:
        folder = Path(cache_dir) if cache_dir else Path("~/.cache/clip").expanduser()
        path = folder / os.path.basename(url)
        if path.is_file():
            return path
        looked.append(str(path))
    return NotComputed(
        f"CLIP weights for {model_name} tag {tag!r} are not in the local cache (looked for "
        f"{'; '.join(looked) or 'nothing: the tag has no source'}); no download is attempted "
        "offline: download them beforehand or pass a checkpoint file"
    )


def _model_config_name(model_name: str) -> str:
    """Register a model-config JSON file with open_clip and return its model name."""
    import open_clip

    if not model_name.lower().endswith(".json"):
        return model_name
    path = Path(model_name)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such open_clip model-config file")
    open_clip.add_model_config(path)
    if path.stem not in open_clip.list_models():
        raise ValueError(f"{path}: not an open_clip model config (embed_dim, vision_cfg, text_cfg)")
    return path.stem


def _needs_hub(name: str) -> bool:
    """Whether creating ``name`` reads files from the Hugging Face hub (text tower, tokenizer)."""
    import open_clip

    if name.startswith("hf-hub:"):
        return True
    text = (open_clip.get_model_config(name) or {}).get("text_cfg", {})
    return bool(text.get("hf_model_name") or text.get("hf_tokenizer_name"))


def load_clip(
    model_name: str,
    pretrained: str | os.PathLike | None,
    *,
    device: str = "cpu",
    cache_dir: str | os.PathLike | None = None,
) -> ClipModel | NotComputed:
    """Load an open_clip model from local weights, or say why it cannot be loaded offline.

    Absent weights (a missing file, a tag not in the cache) give ``NotComputed``; weights
    that are present but do not load raise ``ValueError`` naming them (bad input).
    """
    import open_clip

    name = _model_config_name(model_name)
    kwargs: dict[str, Any] = {}
    if name.startswith("local-dir:"):
        folder = Path(name.split(":", 1)[1])
        if not folder.is_dir():
            return NotComputed(f"CLIP model folder {folder} is missing")
        weights, pretrained_arg = str(folder), None
    else:
        if name not in open_clip.list_models():
            raise ValueError(
                f"unknown open_clip model {name!r}: give a built-in name, a model-config "
                "JSON file or local-dir:FOLDER"
            )
        if pretrained is None or str(pretrained) == "":
            return NotComputed(f"no CLIP weights given for {name} (random weights mean nothing)")
        text = str(pretrained)
        if Path(text).is_file():
            weights = text
        elif _looks_like_path(text):
            return NotComputed(f"CLIP checkpoint file {text} is missing")
        else:
            found = cached_tag_weights(name, text, cache_dir)
            if isinstance(found, NotComputed):
                return found
            weights = str(found)
            # The tag's preprocessing (mean, std, interpolation), as open_clip applies it.
            cfg = open_clip.get_pretrained_cfg(name, text)
            kwargs = {
                "image_mean": cfg.get("mean"),
                "image_std": cfg.get("std"),
                "image_interpolation": cfg.get("interpolation"),
                "image_resize_mode": cfg.get("resize_mode"),
            }
            log.info("CLIP tag %s of %s resolved to the cached file %s", text, name, weights)
        pretrained_arg = weights
    try:
        with hub_offline():
            # A resolved file path (never a tag): open_clip has nothing to download.
            model, _, preprocess = open_clip.create_model_and_transforms(
                name, pretrained=pretrained_arg, device=device, pretrained_text=False, **kwargs
            )
            tokenizer = open_clip.get_tokenizer(name, cache_dir=cache_dir)
    except OSError as err:
        if _needs_hub(name):
            # Tokenizer or text-tower files of the Hugging Face hub, not cached: offline.
            return NotComputed(
                f"{name} needs Hugging Face hub files not in the local cache ({err})"
            )
        raise ValueError(f"{weights}: cannot load it as open_clip model {name} ({err})") from err
    except Exception as err:
        # torch, pickle and safetensors each raise their own types for a bad file.
        raise ValueError(f"{weights}: cannot load it as open_clip model {name} ({err})") from err
    model.eval()
    context = int(getattr(tokenizer, "context_length", None) or model.context_length)
    log.info("loaded CLIP %s from %s (context %d tokens) on %s", name, weights, context, device)
    return ClipModel(model, preprocess, tokenizer, context, name, weights, device)


def token_lengths(clip: ClipModel, captions: Sequence[str]) -> list[int]:
    """Untruncated token counts of ``captions`` (start and end tokens included)."""
    from open_clip.tokenizer import SimpleTokenizer

    tokenizer = clip.tokenizer
    if isinstance(tokenizer, SimpleTokenizer):
        return [len(tokenizer.encode(c)) + 2 for c in captions]
    inner = getattr(tokenizer, "tokenizer", None)  # open_clip's HFTokenizer wraps one
    if inner is not None:
        return [len(inner(c)["input_ids"]) for c in captions]
    return [0 for _ in captions]  # unknown tokenizer: cannot tell, counted as fitting


def _embed_images(clip: ClipModel, paths: Sequence[Path], batch_size: int, what: str) -> np.ndarray:
    """L2-normalised image embeddings of image files."""
    import torch
    from PIL import Image

    out = []
    for start in tqdm(range(0, len(paths), batch_size), desc=f"CLIP {what}", unit="batch"):
        batch = []
        for path in paths[start : start + batch_size]:
            try:
                with Image.open(path) as image:
                    batch.append(clip.preprocess(image.convert("RGB")))
            except OSError as err:
                raise ValueError(f"{path}: cannot read the image ({err})") from err
        with torch.no_grad():
            features = clip.model.encode_image(torch.stack(batch).to(clip.device))
        out.append(torch.nn.functional.normalize(features.float(), dim=-1).cpu().numpy())
    return np.concatenate(out)


def _embed_texts(clip: ClipModel, captions: Sequence[str], batch_size: int) -> np.ndarray:
    """L2-normalised text embeddings (captions truncated to the context by the tokenizer)."""
    import torch

    out = []
    for start in tqdm(range(0, len(captions), batch_size), desc="CLIP captions", unit="batch"):
        tokens = clip.tokenizer(list(captions[start : start + batch_size]))
        with torch.no_grad():
            features = clip.model.encode_text(tokens.to(clip.device))
        out.append(torch.nn.functional.normalize(features.float(), dim=-1).cpu().numpy())
    return np.concatenate(out)


def clip_scores(
    clip: ClipModel,
    images: Sequence[Path],
    captions: Sequence[str],
    sources: Sequence[Path],
    *,
    batch_size: int = 32,
) -> tuple[Result, Result, np.ndarray, np.ndarray]:
    """CLIP-score of ``images`` against ``captions`` and CLIP-image against ``sources``.

    Returns both results and the per-image values (CLIP-score, CLIP-image).
    """
    if not (len(images) == len(captions) == len(sources)):
        raise ValueError("images, captions and source images must have the same length")
    lengths = token_lengths(clip, captions)
    truncated = sum(n > clip.context_length for n in lengths)
    if truncated:
        log.warning(
            "%d of %d caption(s) exceed the %d-token context and are truncated for CLIP-score",
            truncated, len(captions), clip.context_length,
        )  # fmt: skip
    synthetic = _embed_images(clip, images, batch_size, "synthetic images")
    text = _embed_texts(clip, captions, batch_size)
    # The source images repeat when one real pair has several synthetic images: embed once.
    unique = sorted(set(sources))
    index = {p: k for k, p in enumerate(unique)}
    real = _embed_images(clip, unique, batch_size, "source images")[[index[p] for p in sources]]
    cos_text = (synthetic * text).sum(axis=1)
    cos_image = (synthetic * real).sum(axis=1)
    per_score = np.maximum(100.0 * cos_text, 0.0)
    per_image = 100.0 * cos_image
    common = {**clip.describe(), "n": len(images)}
    score = Computed(
        float(per_score.mean()),
        {
            **common,
            "definition": "mean of max(100·cos(image, caption), 0) (torchmetrics CLIPScore)",
            "std": float(per_score.std()),
            "context_length": clip.context_length,
            "n_truncated_captions": int(truncated),
            "max_caption_tokens": int(max(lengths, default=0)),
        },
    )
    image = Computed(
        float(per_image.mean()),
        {
            **common,
            "definition": "mean of 100·cos(synthetic image, its real source image)",
            "std": float(per_image.std()),
        },
    )
    log.info(
        "CLIP-score = %.3f, CLIP-image = %.3f (%d images)", score.value, image.value, len(images)
    )
    return score, image, per_score, per_image
