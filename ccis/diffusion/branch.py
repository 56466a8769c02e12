"""What every trainable branch shares: a ControlNet-style copy of the UNet encoder, its
diffusers config signature, and loading a trained branch folder.

A branch class (CCIS-Diff's, Uni-ControlNet's adapter) subclasses diffusers'
``ControlNetModel`` and adds a few config keys; ``from_unet`` copies the frozen UNet's
encoder and mid block into it through :func:`branch_from_unet`, which checks that every
copied weight landed.
"""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Iterable
from pathlib import Path

from diffusers import ControlNetModel, ModelMixin, UNet2DConditionModel


def derived_signature(own_defaults: dict) -> inspect.Signature:
    """``ControlNetModel.__init__``'s signature plus keyword-only ``own_defaults``.

    diffusers reads a model's config keys from its ``__init__`` signature; a subclass
    that adds a few switches declares this signature instead of copying ~35 arguments.
    """
    parent = [
        p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
        for name, p in inspect.signature(ControlNetModel.__init__).parameters.items()
        if name != "self"
    ]
    own = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=value)
        for name, value in own_defaults.items()
    ]
    self_param = inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return inspect.Signature([self_param, *parent, *own])


def branch_from_unet(
    cls: type[ControlNetModel],
    unet: UNet2DConditionModel,
    own_config: dict,
    new_parameters: tuple[str, ...],
    dropped: tuple[str, ...] = (),
    **controlnet_kwargs,
) -> ControlNetModel:
    """``cls`` with its encoder and mid block copied from ``unet`` (1-channel condition).

    diffusers' ``ControlNetModel.from_unet`` makes the copy; its weights are then loaded
    into ``cls(**config, **own_config)``, leaving out the keys starting with ``dropped``.
    Every key the new model misses must start with one of ``new_parameters`` (its own
    modules) and none may be left over: otherwise the copy would silently be partial.
    """
    plain = ControlNetModel.from_unet(unet, conditioning_channels=1, **controlnet_kwargs)
    config = {k: v for k, v in plain.config.items() if not k.startswith("_")}
    model = cls(**config, **own_config)
    state = plain.state_dict()
    if dropped:
        state = {k: v for k, v in state.items() if not k.startswith(dropped)}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any(not key.startswith(new_parameters) for key in missing):
        raise RuntimeError(
            f"{cls.__name__}: weight copy from the UNet mismatched: missing {missing}, "
            f"unexpected {unexpected}"
        )
    return model


def takes_text_masks(branch: ModelMixin) -> bool:
    """Whether a branch's forward reads the prompt's token masks (TAAM's branch does)."""
    return "text_key_mask" in inspect.signature(branch.forward).parameters


def load_branch(folder: str | os.PathLike, classes: Iterable[type[ModelMixin]]) -> ModelMixin:
    """Load a trained branch folder with whichever of ``classes`` wrote it (its
    ``config.json`` names the class); diffusers' plain ``ControlNetModel`` is always known."""
    folder = Path(folder)
    config = folder / "config.json"
    if not config.is_file():
        raise FileNotFoundError(f"{folder}: not a trained branch (no config.json)")
    try:
        name = json.loads(config.read_text()).get("_class_name")
    except json.JSONDecodeError as err:
        raise ValueError(f"{config}: not valid JSON ({err})") from err
    known = {c.__name__: c for c in (*classes, ControlNetModel)}
    if name not in known:
        raise ValueError(f"{config}: unknown branch class {name!r}; known: {', '.join(known)}")
    return known[name].from_pretrained(folder)
