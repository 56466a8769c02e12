"""Words and phrases that name each measured attribute in captions."""

from __future__ import annotations

import re

from ccis.caption.attributes import Attributes

COLOUR_WORDS = {
    "pale": ("pale", "pale pink", "whitish"),
    "pink": ("pink", "pinkish"),
    "red": ("red", "reddish", "deep red"),
}
SHAPE_WORDS = {
    "round": ("round", "rounded"),
    "oval": ("oval", "elongated"),
    "irregular": ("irregular", "irregularly shaped"),
    "lobulated": ("lobulated", "multi-lobed"),
}
TEXTURE_WORDS = {
    "smooth": ("smooth", "smooth-textured"),
    "rough": ("rough", "rough-textured", "granular"),
}
TEXTURE_NOUNS = {"smooth": ("smooth",), "rough": ("rough", "granular", "nodular")}
SWELLING_WORDS = {
    "flat": ("flat", "barely raised"),
    "slight": ("slightly swollen", "slightly raised"),
    "moderate": ("moderately swollen", "moderately raised"),
    "significant": ("significantly swollen", "markedly swollen"),
}
SIZE_WORDS = {"small": ("small",), "medium": ("medium-sized",), "large": ("large",)}
MUCOSA_WORDS = {
    "pink": ("pink mucosa", "pinkish mucosal tissue"),
    "red": ("reddish mucosa", "red mucosal tissue"),
    "orange": ("orange-pink mucosa", "orange-tinged mucosal tissue"),
    "pale": ("pale mucosa", "pale mucosal tissue"),
    "dark": ("darker mucosa", "dim mucosal tissue"),
}
DEBRIS_WORDS = ("some yellowish debris", "yellowish residue", "a little yellow mucus")
HIGHLIGHT_WORDS = ("reflective spots", "specular highlights", "bright reflections")
FOLD_WORDS = ("mucosal folds", "haustral folds", "visible folds")


# Where a caption turns from the polyp to its surroundings; colours after this describe
# the mucosa, not the polyp.
_BACKGROUND_TURN = re.compile(
    r"\b(against|surrounded by|background|the view shows|mucosa|mucosal)\b", re.IGNORECASE
)


def polyp_clause(text: str) -> str:
    """The part of a caption that describes the polyp (before the background clause)."""
    return _BACKGROUND_TURN.split(text, maxsplit=1)[0]


def colour_conflicts(colour: str, text: str) -> list[str]:
    """Colour words describing the polyp in ``text`` that name a colour other than ``colour``.

    Only the polyp clause is read (the mucosa may well be pink under a red polyp), and
    "pale pink" counts as pale, so "pink" inside it is not a conflict for pale polyps.
    """
    lowered = f" {polyp_clause(text).lower()} "
    for phrase in sorted(COLOUR_WORDS.get(colour, ()), key=len, reverse=True):
        lowered = lowered.replace(phrase, " ")
    found = []
    for other, words in COLOUR_WORDS.items():
        if other == colour:
            continue
        found += [w for w in words if re.search(rf"\b{re.escape(w)}\b", lowered)]
    return sorted(set(found))


def background_phrase(attrs: Attributes, pick: int, drop_details: int = 0) -> str:
    """The background clause; ``drop_details`` removes highlights, then folds, then debris."""
    mucosa = MUCOSA_WORDS[attrs.mucosa]
    parts = []
    details = [
        ("debris", attrs.debris, DEBRIS_WORDS),
        ("folds", attrs.folds, FOLD_WORDS),
        ("highlights", attrs.highlights, HIGHLIGHT_WORDS),
    ]
    present = [(name, words) for name, flag, words in details if flag]
    present = present[: max(0, len(present) - drop_details)]
    for i, (_, words) in enumerate(present):
        parts.append(words[(pick + i) % len(words)])
    base = mucosa[pick % len(mucosa)]
    if not parts:
        return base
    if len(parts) == 1:
        return f"{base} with {parts[0]}"
    return f"{base} with {', '.join(parts[:-1])} and {parts[-1]}"
