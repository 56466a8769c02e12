"""The interface every captioner implements."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ccis.caption.attributes import Attributes

# The instruction the paper gives its LLaMA agent (CCIS-Diff, Fig. 2b).
PAPER_INSTRUCTION = (
    "Given a colonoscopy image and a corresponding polyp segmentation mask, please describe "
    "the polyps in terms of color, shape, texture, swollen degree and background."
)


@dataclass(frozen=True)
class Caption:
    """A caption and where it came from."""

    text: str
    captioner: str  # the captioner that produced this text (may differ on fallback)
    notes: str = ""


class Captioner(Protocol):
    """Turns measured attributes (and optionally the pixels) into a caption."""

    name: str
    version: str

    def caption(
        self,
        pair_id: str,
        attributes: Attributes,
        image_png: bytes | None = None,
        drop: int = 0,
    ) -> Caption:
        """Caption one pair; ``drop`` > 0 asks for a shorter text (fewer optional details)."""
        ...
