"""The closed vocabulary and sentence frame the language-model captioner writes in.

A small model asked to describe measurements also describes what it imagines ("a white
border", "not affected by bleeding"), mixes the wall into the polyp, repeats itself and
leaves attributes out. Here a caption is one sentence of two clauses, as the paper's
captions are:

* the polyp clause names the measured colour, shape, texture and swelling, each exactly
  once and in any of the 24 orders, joined by linking words (articles, prepositions,
  nouns such as "polyp" or "surface", the measured size, the measured position as one
  phrase such as "upper left");
* after a turn such as "against" or "lying on", the background clause names the
  measured mucosa and the details seen on it.

No other word can be written, so a caption cannot contradict the measurements or claim
what was not measured. Word order, which synonym, which linking words, which turn: those
stay the model's, and that is where its captions differ from the template's.
``caption_grammar`` writes the frame as a llama.cpp grammar (GBNF).
"""

from __future__ import annotations

import itertools
import re

from ccis.caption.attributes import Attributes
from ccis.caption.consistency import DETAIL_WORDS, WORDS, contradicting_words
from ccis.caption.phrases import MUCOSA_WORDS


def _words(text: str) -> list[str]:
    """The words of ``text``, first occurrence order, no repeats."""
    return list(dict.fromkeys(text.split()))


# Linking words of the polyp clause (attribute words come from WORDS, and only as the
# attribute phrases below).
_LINKING = """
a an the of in on at to with and or its it is which that this as has shows showing
appears sits sitting lies lying seen visible set covering filling fills occupies
occupying rising rises standing located placed there one
polyp lesion growth mass surface texture shape outline contour swelling elevation view
frame image side corner
swollen raised elevated bulging protruding dome domed
"""
# Words that need a word after them: a clause may not end on one ("with a, on").
_NEEDS_NEXT = set(
    _words("""
a an the of in on at to with and or its it is which that this as has shows showing appears
sits sitting lies lying seen set covering filling fills occupies occupying rising rises
standing located placed there one
mucosal some few visible scattered bright yellowish yellow haustral specular shiny wet
glistening
""")
)
# Words of the background clause besides the mucosa's phrases and the details' words.
_BACKGROUND = "a an the of with and some few visible scattered bright mucosa mucosal tissue wall"
DETAIL_EXTRAS = {
    "debris": ("yellowish", "yellow", "patches", "spots", "traces"),
    "folds": ("haustral", "ridges"),
    "highlights": ("specular", "shiny", "wet", "glistening", "spots"),
}
# How the background clause begins.
TURNS = (", against ", " against ", ", on ", " on ", ", set against ", ", surrounded by ",
         "; the background shows ", ", lying on ", ", over ")  # fmt: skip
# Phrases for a swelling degree: "slightly raised", "moderate swelling", ...
_RAISED_WORDS = ("raised", "swollen", "elevated", "bulging")
_DEGREE_NOUNS = ("swelling", "elevation")


def attribute_phrases(attrs: Attributes) -> dict[str, list[str]]:
    """For colour, shape, texture and swelling: the phrases naming the measured value."""
    out = {}
    for attribute in ("colour", "shape", "texture"):
        words = list(WORDS[attribute][getattr(attrs, attribute)])
        if attribute == "shape" and attrs.shape == "irregular":
            words.append("irregularly shaped")
        if attribute == "texture":
            words += [f"{w}-{kind}" for w in words[:1] for kind in ("surfaced", "textured")]
        out[attribute] = words
    degrees = WORDS["swelling"][attrs.swelling]
    if attrs.swelling == "flat":
        out["swelling"] = ["flat", "barely raised"]
    else:
        adverbs = [w for w in degrees if w.endswith("ly")]
        adjectives = [w for w in degrees if not w.endswith("ly")]
        out["swelling"] = [f"{a} {r}" for a in adverbs for r in _RAISED_WORDS] + [
            f"{a} {n}" for a in adjectives for n in _DEGREE_NOUNS
        ]
    return out


def linking_words(attrs: Attributes) -> list[str]:
    """Words the polyp clause may use between the attribute phrases."""
    described = {
        w
        for attribute in ("colour", "shape", "texture", "swelling")
        for options in WORDS[attribute].values()
        for option in options
        for w in re.split("[ -]", option)
    }
    words = _words(_LINKING) + [w for options in WORDS["size"].values() for w in options]
    if attrs.location != "none":  # the position as one phrase: "upper left", "centre"
        words += [attrs.location, attrs.location.replace("centre", "center")]
    if attrs.n_polyps > 1:
        words += ["larger", "largest"]
    if attrs.swelling == "flat":  # a flat polyp is not raised in any words
        described |= {*_RAISED_WORDS, *_DEGREE_NOUNS, "protruding", "dome", "domed"}
    return [w for w in _allowed(words, attrs) if w not in described]


def background_words(attrs: Attributes) -> list[str]:
    """Words of the background clause: the measured mucosa's phrases, the details seen.

    The mucosa's colour appears only inside its phrases ("pink mucosa"), never alone.
    """
    words = _words(_BACKGROUND) + list(MUCOSA_WORDS.get(attrs.mucosa, ()))
    for detail, options in DETAIL_WORDS.items():
        if getattr(attrs, detail):
            words += [*options, *DETAIL_EXTRAS[detail]]
    return _allowed(words, attrs)


def _allowed(words: list[str], attrs: Attributes) -> list[str]:
    banned = set(contradicting_words(attrs))
    return [w for w in dict.fromkeys(words) if " " in w or not set(w.split("-")) & banned]


def _alternatives(words: list[str]) -> str:
    return " | ".join(f'"{w}"' for w in sorted(set(words), key=lambda w: (-len(w), w)))


def caption_grammar(attrs: Attributes, most_words: int, closing: str) -> str:
    """GBNF for a caption of ``attrs`` in the frame above, then ``closing``.

    The first word is a capitalised linking word; words are joined by a space, a comma, a
    semicolon or a colon; the sentence ends with a full stop. Linking words: at most
    ``most_words`` / 6 before the first attribute phrase, / 8 between two and after the
    last; the background has at most 8 words. Neither clause ends on a word that needs
    another after it ("with a, against").
    """
    closing = closing.replace("\\", "\\\\").replace('"', '\\"')
    link = linking_words(attrs)
    most, gap = max(1, most_words // 6), max(1, most_words // 8)
    tail = gap
    phrases = attribute_phrases(attrs)
    if attrs.n_polyps == 0:
        clause = f'"No polyp is visible" (sep link){{0,{most}}}'
    else:
        orders = " | ".join(
            " gap ".join(order) for order in itertools.permutations(sorted(phrases))
        )
        clause = (
            f"opener (sep link){{0,{most}}} sep ({orders}) ((sep link){{0,{tail - 1}}} sep lend)?"
        )
    background = background_words(attrs)
    lines = [
        f'root ::= {clause} turn (bword sep){{0,7}} bend "." "{closing}"',
        'sep ::= " " | ", " | "; " | ": "',
        f"gap ::= sep (link sep){{0,{gap}}}",
        f"turn ::= {' | '.join(f'{chr(34)}{t}{chr(34)}' for t in TURNS)}",
        f"opener ::= {_alternatives([w[:1].upper() + w[1:] for w in link])}",
        f"link ::= {_alternatives(link)}",
        f"lend ::= {_alternatives([w for w in link if w not in _NEEDS_NEXT])}",
        f"bword ::= {_alternatives(background)}",
        f"bend ::= {_alternatives([w for w in background if w not in _NEEDS_NEXT])}",
    ]
    lines += [f"{name} ::= {_alternatives(options)}" for name, options in sorted(phrases.items())]
    return "\n".join(lines) + "\n"
