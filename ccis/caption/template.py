"""Template captioner: fluent captions in the paper's style, no language model needed.

Phrasing varies with a seed (sentence pattern and word choice are drawn per pair from a
hash of seed and pair id), so captions are diverse yet reproducible and independent of
the order or sharding in which pairs are captioned. Every word comes from the measured
attributes.
"""

from __future__ import annotations

import hashlib
import re

import numpy as np

from ccis import __version__
from ccis.caption.attributes import Attributes
from ccis.caption.base import Caption
from ccis.caption.phrases import (
    COLOUR_WORDS,
    SHAPE_WORDS,
    SIZE_WORDS,
    SWELLING_WORDS,
    TEXTURE_NOUNS,
    TEXTURE_WORDS,
    background_phrase,
)

# Sentence patterns. Slots: c colour, sh shape, tx texture adjective, txn texture noun,
# sw swelling, sz size, loc location clause (may be empty), bg background.
PATTERNS = (
    "The polyp is {c}, {sh}, {tx}, and {sw}{loc}, set against a background of {bg}.",
    "{Sz}{c} polyp, {sh} and {sw}, with a {txn} surface{loc}, against {bg}.",
    "The polyp appears {c} in colour, {sh} and {sw}, with a {txn} texture{loc}; "
    "the background shows {bg}.",
    "{Sz}{sh} polyp that is {c}, {tx} and {sw}{loc}, surrounded by {bg}.",
)
MULTI_PREFIX = {
    2: ("Two polyps are visible. ", "larger"),
    3: ("Several polyps are visible. ", "largest"),
}


class TemplateCaptioner:
    """Captions from attributes with seeded phrase variation."""

    name = "template"
    version = f"template-{__version__}"

    def __init__(self, seed: int = 0):
        self.seed = seed

    def _rng(self, pair_id: str) -> np.random.Generator:
        digest = hashlib.sha256(f"{self.seed}:{pair_id}".encode()).digest()
        return np.random.default_rng(int.from_bytes(digest[:8], "little"))

    def caption(
        self,
        pair_id: str,
        attributes: Attributes,
        image_png: bytes | None = None,
        drop: int = 0,
    ) -> Caption:
        """Caption one pair. ``drop`` removes optional details: location, size, then
        background details one by one."""
        rng = self._rng(pair_id)
        pick = int(rng.integers(1 << 30))
        a = attributes
        if a.n_polyps == 0:
            bg = background_phrase(a, pick, max(0, drop))
            return Caption(f"No polyp is visible; the view shows {bg}.", self.name)

        def word(table: dict[str, tuple[str, ...]], key: str, salt: int) -> str:
            options = table[key]
            return options[(pick // (salt + 1)) % len(options)]

        loc = "" if drop >= 1 else f" in the {a.location} of the view"
        # With several polyps the size word would stack on "larger": leave it to the mask.
        size = "" if drop >= 2 or a.n_polyps >= 2 else word(SIZE_WORDS, a.size, 5) + " "
        pattern = PATTERNS[pick % len(PATTERNS)]
        text = pattern.format(
            c=word(COLOUR_WORDS, a.colour, 1),
            sh=word(SHAPE_WORDS, a.shape, 2),
            tx=word(TEXTURE_WORDS, a.texture, 3),
            txn=word(TEXTURE_NOUNS, a.texture, 3),
            sw=word(SWELLING_WORDS, a.swelling, 4),
            Sz=size,
            loc=loc,
            bg=background_phrase(a, pick, max(0, drop - 2)),
        )
        if pattern.startswith("{Sz}"):
            text = ("An " if text[0] in "aeiou" else "A ") + text
        if a.n_polyps >= 2:
            prefix, which = MULTI_PREFIX[min(a.n_polyps, 3)]
            text = prefix + re.sub(r"^(The|An?) ", f"The {which} ", text)
        return Caption(text, self.name)
