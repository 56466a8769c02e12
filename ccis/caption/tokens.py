"""Caption length in text-encoder tokens, and fitting captions into the 77-token window.

Stable Diffusion's CLIP text encoder sees at most 77 tokens (start and end included);
anything longer is cut off silently at training and sampling time. We count with the
configured tokenizer (a Hugging Face tokenizer folder, e.g. ``<sd15>/tokenizer``) or, by
default, with open_clip's copy of the same CLIP BPE vocabulary, which ships inside the
``open_clip_torch`` package and so works offline.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

from ccis.caption.base import Caption

log = logging.getLogger(__name__)

CLIP_CONTEXT = 77


class TokenCounter:
    """Counts tokens of a text the way the text encoder's tokenizer will, specials included."""

    def __init__(self, tokenizer: str | os.PathLike | None = None):
        if tokenizer is None:
            from open_clip.tokenizer import SimpleTokenizer

            bpe = SimpleTokenizer()
            self.name = "clip-bpe (open_clip)"
            self._count: Callable[[str], int] = lambda text: len(bpe.encode(text)) + 2
        else:
            from transformers import AutoTokenizer

            try:
                tok = AutoTokenizer.from_pretrained(str(tokenizer), local_files_only=True)
            except (OSError, ValueError) as err:
                raise ValueError(f"{tokenizer}: cannot load a tokenizer from it ({err})") from err
            self.name = str(tokenizer)
            self._count = lambda text: len(tok(text, truncation=False)["input_ids"])

    def __call__(self, text: str) -> int:
        return self._count(text)


def fit_caption(
    make: Callable[[int], Caption],
    count: Callable[[str], int],
    max_tokens: int = CLIP_CONTEXT,
    max_drop: int = 6,
) -> tuple[Caption, int, bool]:
    """Ask ``make(drop)`` for shorter and shorter captions until one fits ``max_tokens``.

    Returns (caption, its token count, whether it had to be truncated). A caption that
    still does not fit at the shortest level is cut at a word boundary and flagged.
    """
    for drop in range(max_drop + 1):
        caption = make(drop)
        n = count(caption.text)
        if n <= max_tokens:
            return caption, n, False
    words = caption.text.rstrip(".").split()
    # The closing full stop is a token too: fit the words with it.
    while words and count(" ".join(words).rstrip(",;.") + ".") > max_tokens:
        words.pop()
    text = " ".join(words).rstrip(",;.") + "."
    log.warning("caption cut to %d tokens: %r", max_tokens, text)
    cut = Caption(text, caption.captioner, (caption.notes + "; " if caption.notes else "") + "cut")
    return cut, count(text), True
