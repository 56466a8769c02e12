"""Does a caption agree with the measured attributes? What does it name, what contradicts?

A language model may phrase the measurements in its own words, so the checks read words
and short phrases, not fixed templates: each attribute value has the words that name it
(``TERMS``), and a caption is rejected when it names a value other than the measured one,
mentions a background detail that was not seen, or does not name the measured colour.
Colour words that qualify the background ("pink mucosa", "reddish folds") describe the
wall, not the polyp, and are set aside first.
"""

from __future__ import annotations

import re

from ccis.caption.attributes import Attributes
from ccis.caption.phrases import polyp_clause

# Words that raise a polyp; swelling degrees qualify one of them.
_RAISED = r"(?:swollen|swelling|raised|elevated|elevation|bulging|protruding)"

# Plain words naming each value of the polyp attributes captions describe: the checks
# below read them, and the LLaMA captioner keeps the model from writing the other values'
# words. Swelling degrees ("slightly", ...) name a swelling only before a word in _RAISED.
WORDS: dict[str, dict[str, tuple[str, ...]]] = {
    "colour": {
        "pale": ("pale", "pale pink", "whitish"),
        "pink": ("pink", "pinkish"),
        "red": ("red", "reddish", "deep red"),
    },
    "shape": {
        "round": ("round", "rounded", "circular"),
        "oval": ("oval", "ovoid", "elongated"),
        "irregular": ("irregular", "irregularly"),
        "lobulated": ("lobulated", "lobed", "multilobed", "multi-lobed"),
    },
    "texture": {
        "smooth": ("smooth",),
        "rough": ("rough", "granular", "nodular", "bumpy"),
    },
    "swelling": {
        "flat": ("flat",),
        "slight": ("slight", "slightly", "mild", "mildly"),
        "moderate": ("moderate", "moderately"),
        "significant": ("significant", "significantly", "marked", "markedly", "prominent",
                        "prominently", "strongly"),
    },
    "size": {
        "small": ("small", "tiny"),
        "medium": ("medium", "medium-sized", "mid-sized"),
        "large": ("large", "big"),
    },
}  # fmt: skip


def _word_patterns(attribute: str, words: tuple[str, ...]) -> tuple[str, ...]:
    if attribute == "swelling" and words != ("flat",):
        return tuple(rf"\b{re.escape(w)} {_RAISED}\b" for w in words)
    if attribute == "swelling":
        return (r"\bflat\b", r"\b(barely|not) raised\b")
    return tuple(rf"\b{re.escape(w)}\b" for w in words)


# Regular expressions naming each value.
TERMS: dict[str, dict[str, tuple[str, ...]]] = {
    attribute: {value: _word_patterns(attribute, words) for value, words in values.items()}
    for attribute, values in WORDS.items()
}
# The attributes every caption should name (the paper's colour, shape, texture, swelling).
DESCRIBED = ("colour", "shape", "texture", "swelling")

# Background details: words that claim the detail was seen.
DETAIL_WORDS = {
    "debris": ("debris", "residue", "stool", "faecal", "fecal"),
    "folds": ("fold", "folds"),
    "highlights": ("reflection", "reflections", "highlight", "highlights", "glare", "glint",
                   "glints", "reflective"),
}  # fmt: skip
DETAILS = {k: r"\b(" + "|".join(words) + r")\b" for k, words in DETAIL_WORDS.items()}

# A colour word qualifying a background noun describes the wall, not the polyp.
_ALL_COLOURS = sorted(
    {w for words in WORDS["colour"].values() for w in words}, key=len, reverse=True
)
_BACKGROUND_COLOUR = re.compile(
    r"\b(?:" + "|".join(re.escape(w) for w in _ALL_COLOURS) + r")(?:[ -](?:and |or )?\w+)?[ -]"
    r"(?:mucosa|mucosal|tissue|wall|lining|background|folds?|debris|residue|mucus)\b",
    re.IGNORECASE,
)
# Words placing the polyp in the frame ("top" and "middle" are left out: they also name
# parts of the polyp).
_LOCATION_WORDS = {
    "upper": ("upper",),
    "lower": ("lower",),
    "left": ("left",),
    "right": ("right",),
    "centre": ("centre", "center"),
}


def _polyp_words(text: str) -> str:
    """The polyp clause of ``text``, lower case, with background colour phrases removed."""
    return polyp_clause(_BACKGROUND_COLOUR.sub(" ", text)).lower()


def _values_named(text: str, attribute: str) -> set[str]:
    """Values of ``attribute`` that ``text`` names."""
    return {
        value
        for value, patterns in TERMS[attribute].items()
        if any(re.search(p, text, re.IGNORECASE) for p in patterns)
    }


def named_attributes(text: str, attributes: Attributes) -> set[str]:
    """Which of colour, shape, texture and swelling ``text`` names with their measured value."""
    named = set()
    for attribute in DESCRIBED:
        where = _polyp_words(text) if attribute == "colour" else text
        if getattr(attributes, attribute) in _values_named(where, attribute):
            named.add(attribute)
    return named


def check_caption(text: str, attributes: Attributes) -> list[str]:
    """Why ``text`` disagrees with the measurements (empty when it is acceptable)."""
    problems = []
    words = re.findall(r"[A-Za-z]+", text)
    if not 5 <= len(words) <= 60:
        problems.append(f"caption has {len(words)} words (want 5 to 60)")
    lowered = text.lower()
    if attributes.n_polyps == 0:
        if "no polyp" not in lowered:
            problems.append("caption does not say that no polyp is visible")
        return problems
    head = _polyp_words(text)
    if attributes.colour not in _values_named(head, "colour"):
        problems.append(f"caption does not name the measured colour {attributes.colour!r}")
    for attribute in (*DESCRIBED, "size"):
        measured = getattr(attributes, attribute)
        named = _values_named(head, attribute)
        if attribute == "colour" and measured == "pale":
            named.discard("pink")  # "pale pink" names pale
        others = sorted(named - {measured})
        if others:
            problems.append(
                f"caption calls the {attribute} {', '.join(others)} (measured {measured!r})"
            )
    for detail, pattern in DETAILS.items():
        if not getattr(attributes, detail) and re.search(pattern, lowered):
            problems.append(f"caption mentions {detail} that were not seen")
    problems += _location_problems(head, attributes)
    if attributes.n_polyps == 1 and re.search(r"\b(two|three|several|multiple) polyps\b", lowered):
        problems.append("caption speaks of several polyps (one measured)")
    return problems


def _location_problems(head: str, attributes: Attributes) -> list[str]:
    location = attributes.location
    wrong = [
        word
        for part, words in _LOCATION_WORDS.items()
        if part not in location
        for word in words
        if re.search(rf"\b{word}\b", head)
    ]
    return [f"caption places the polyp {wrong[0]!r} (measured {location!r})"] if wrong else []


def contradicting_words(attributes: Attributes) -> list[str]:
    """Single words that would contradict the measurements if a caption used them."""
    if attributes.n_polyps == 0:
        return []
    words = []
    for attribute, values in WORDS.items():
        measured = getattr(attributes, attribute)
        for value, options in values.items():
            if value != measured:
                words += [w for w in options if " " not in w and "-" not in w]
    words += [w for part, options in _LOCATION_WORDS.items() if part not in attributes.location
              for w in options]  # fmt: skip
    words += [w for detail, options in DETAIL_WORDS.items() if not getattr(attributes, detail)
              for w in options]  # fmt: skip
    return sorted(set(words))
