"""Prompts for the language-model captioner: chat template or few-shot completion.

Instruction-tuned models get the paper's instruction and the measurements as a chat,
rendered with the model's own template (GGUF metadata ``tokenizer.chat_template``). Base
models have no template and follow instructions poorly; they continue a few-shot text of
measurements and captions instead. Either way the answer is JSON, ``{"caption": "..."}``,
and the prompt ends with its opening, so the model only writes the caption and a grammar
closes it. Shared text comes first and the pair's measurements last, so consecutive
prompts share a long prefix whose KV cache is reused.

The few-shot captions differ in attributes, sentence pattern and word choice from each
other, so a model that copies a pattern must still fill in the pair's own measurements.
"""

from __future__ import annotations

from collections.abc import Mapping

from ccis.caption.attributes import Attributes
from ccis.caption.base import PAPER_INSTRUCTION
from ccis.caption.phrases import background_phrase
from ccis.caption.vocabulary import caption_grammar

PROMPT_KINDS = ("auto", "chat", "completion")
# Swelling as a caption says it: small models copy words from the prompt more readily
# than they turn "slight" into "slightly swollen".
SWELLING_PHRASES = {
    "flat": "flat",
    "slight": "slightly swollen",
    "moderate": "moderately swollen",
    "significant": "significantly swollen",
}
ANSWER_OPEN = '{"caption": "'
# Caption characters: letters, digits and plain punctuation (no quote or backslash, so
# the JSON string needs no escapes, and no control characters, which JSON rejects).
CAPTION_CHARS = "[A-Za-z0-9 ,.;:'()-]"

SYSTEM_PROMPT = (
    "You write short, factual captions for a colonoscopy polyp data set. The measurements "
    "you are given were taken from the pixels: describe them, never contradict them, and "
    "add nothing they do not support."
)
COMPLETION_HEADER = (
    "Captions of colonoscopy frames for a polyp data set. Each caption is one sentence "
    "that describes the polyp exactly as measured (colour, shape, texture, swelling, size "
    "and position), then the background, and adds nothing else.\n\n"
)


def _example(caption: str, **fields) -> tuple[Attributes, str]:
    base = dict(
        colour="pink", size="medium", shape="round", texture="smooth", swelling="slight",
        location="centre", n_polyps=1, area_fraction=0.05, touches_border=False,
        mucosa="pink", debris=False, highlights=False, folds=False, chroma_gr=0.5,
        chroma_br=0.4, circularity=0.9, solidity=0.95, aspect=0.8, roughness=0.02,
        relief=0.05, debris_fraction=0.0, highlight_fraction=0.0, fold_density=0.0,
    )  # fmt: skip
    base.update(fields)
    return Attributes(**base), caption


# Few-shot examples for base models: six sentence patterns, each in the caption frame of
# ccis.caption.vocabulary and passing ccis.caption.consistency's checks.
EXAMPLES = (
    _example(
        "A small red polyp in the upper left, round and smooth and slightly raised, against "
        "pink mucosa with a few specular highlights.",
        colour="red", size="small", shape="round", texture="smooth", swelling="slight",
        location="upper left", mucosa="pink", highlights=True,
    ),
    _example(
        "Large, pale and lobulated, with a granular surface, the polyp is markedly swollen in "
        "the centre; the background shows reddish mucosa with haustral folds.",
        colour="pale", size="large", shape="lobulated", texture="rough",
        swelling="significant", location="centre", mucosa="red", folds=True,
    ),
    _example(
        "In the lower right, a medium-sized oval polyp, pink and smooth-surfaced, is "
        "moderately raised, lying on orange-pink mucosa with yellowish debris.",
        colour="pink", size="medium", shape="oval", texture="smooth", swelling="moderate",
        location="lower right", mucosa="orange", debris=True,
    ),
    _example(
        "A large, irregularly shaped, deep red polyp to the centre right, rough-surfaced, "
        "with moderate swelling, set against reddish mucosa with folds and bright reflections.",
        colour="red", size="large", shape="irregular", texture="rough", swelling="moderate",
        location="centre right", mucosa="red", folds=True, highlights=True,
    ),
    _example(
        "A small whitish polyp at the lower left, oval, flat and smooth, on pale mucosa.",
        colour="pale", size="small", shape="oval", texture="smooth", swelling="flat",
        location="lower left", mucosa="pale",
    ),
    _example(
        "A medium-sized pink polyp in the upper centre, round and rough, is significantly "
        "swollen, surrounded by pinkish mucosal tissue.",
        colour="pink", size="medium", shape="round", texture="rough",
        swelling="significant", location="upper centre", mucosa="pink",
    ),
)  # fmt: skip


def choose_prompt_kind(requested: str, metadata: Mapping[str, str]) -> str:
    """``chat`` or ``completion``: as requested, or (``auto``) from the GGUF metadata."""
    if requested not in PROMPT_KINDS:
        raise ValueError(f"prompt kind must be one of {', '.join(PROMPT_KINDS)}, got {requested!r}")
    if requested != "auto":
        return requested
    return "chat" if metadata.get("tokenizer.chat_template") else "completion"


def measurements(attrs: Attributes, drop: int = 0) -> str:
    """The measurements as one line; ``drop`` leaves out location, size, then details."""
    background = background_phrase(attrs, 0, max(0, drop - 2))
    if attrs.n_polyps == 0:
        return f"no polyp; background {background}"
    parts = []
    if attrs.n_polyps > 1:
        parts.append(f"polyps {attrs.n_polyps} (describe the largest)")
    parts.append(f"colour {attrs.colour}")
    if drop < 2:
        parts.append(f"size {attrs.size}")
    swelling = SWELLING_PHRASES[attrs.swelling]
    parts += [f"shape {attrs.shape}", f"texture {attrs.texture}", f"swelling {swelling}"]
    if drop < 1:
        parts.append(f"position {attrs.location}")
    parts.append(f"background {background}")
    return "; ".join(parts)


def word_limit(drop: int) -> int:
    """Most words a caption may have at shortening level ``drop``."""
    return max(12, 40 - 6 * drop)


def answer_grammar(attrs: Attributes, drop: int) -> str:
    """GBNF for the rest of the answer after ``ANSWER_OPEN``: the caption, then ``"}``.

    The caption is one sentence in the closed vocabulary, without this pair's
    contradicting words (``ccis.caption.vocabulary``).
    """
    return caption_grammar(attrs, word_limit(drop), '"}')


def completion_prompt(attrs: Attributes, drop: int = 0) -> str:
    """Few-shot prompt for a base model, ending where the caption begins."""
    shots = "".join(
        f'Measurements: {measurements(a)}\nAnswer: {ANSWER_OPEN}{caption}"}}\n\n'
        for a, caption in EXAMPLES
    )
    query = f"Measurements: {measurements(attrs, drop)}\nAnswer: {ANSWER_OPEN}"
    return COMPLETION_HEADER + shots + query


def chat_messages(attrs: Attributes, drop: int = 0) -> list[dict]:
    """System and user messages for an instruction-tuned model (measurements last)."""
    user = (
        f"{PAPER_INSTRUCTION}\n\nWrite one sentence of at most {word_limit(drop)} words that "
        "names the polyp's colour, shape, texture and swelling as measured, then the "
        'background. Answer in JSON: {"caption": "..."}.\n\n'
        f"Measurements: {measurements(attrs, drop)}."
    )
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


def render_chat(template: str, messages: list[dict], bos: str, eos: str) -> str:
    """``messages`` through the model's chat template, then the opening of the answer."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    formatter = Jinja2ChatFormatter(template, eos_token=eos, bos_token=bos)
    try:
        prompt = formatter(messages=messages).prompt
    except Exception:  # noqa: BLE001 - templates raise their own errors, e.g. no system role
        system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
        rest = [dict(m) for m in messages if m["role"] != "system"]
        rest[0]["content"] = f"{system}\n\n{rest[0]['content']}"
        prompt = formatter(messages=rest).prompt
    return prompt + ANSWER_OPEN
