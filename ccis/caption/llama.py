"""LLaMA captioner: llama-cpp-python with a local GGUF model, grounded and checked.

The prompt carries the paper's instruction and the attributes measured from the pixels;
the answer is constrained by a JSON schema (compiled to a llama.cpp grammar) in which the
model first commits to colour, shape, texture and swelling, then writes the caption.
Answers that disagree with the measurements, or whose caption does not name the measured
colour or names another, are rejected and retried; after the last retry the pair gets the
template caption, marked as a fallback. With a vision projector (``mmproj``) a
multimodal LLaMA/LLaVA model also sees the image. Results are cached by a hash of
everything that determines them, so a re-run does not generate again.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import re
from pathlib import Path

from ccis.caption.attributes import Attributes
from ccis.caption.base import PAPER_INSTRUCTION, Caption
from ccis.caption.phrases import (
    COLOUR_WORDS,
    colour_conflicts,
    describe_attributes,
    polyp_clause,
)
from ccis.caption.template import TemplateCaptioner
from ccis.common.atomic import write_bytes_atomic
from ccis.common.hashing import sha256_bytes

log = logging.getLogger(__name__)

GGUF_MAGIC = b"GGUF"
SYSTEM_PROMPT = (
    "You write short, factual captions for a colonoscopy polyp data set. The measurements "
    "you are given were taken from the pixels: describe them, never contradict them, and "
    "add nothing they do not support."
)
STYLE_EXAMPLE = (
    "The polyp is pink, round, smooth-textured, and slightly swollen, set against a "
    "background of mucosal tissue with some yellowish debris."
)
# Caption characters: letters, digits and plain punctuation. Restricting them in the
# grammar keeps control characters (which strict JSON rejects) out of the answer.
CAPTION_PATTERN = r"^[A-Za-z0-9 ,.;:'()-]{10,320}$"
ENUMS = {
    "colour": ["pale", "pink", "red"],
    "shape": ["round", "oval", "irregular", "lobulated"],
    "texture": ["smooth", "rough"],
    "swelling": ["flat", "slight", "moderate", "significant"],
}


class CaptionerError(ValueError):
    """The captioner cannot run (missing or invalid model file, ...)."""


def check_gguf(path: str | os.PathLike, what: str) -> Path:
    """Return ``path`` if it is a readable GGUF file; otherwise raise a clear error."""
    path = Path(path)
    if not path.is_file():
        raise CaptionerError(f"{path}: {what} not found (set caption.llama.model to a GGUF file)")
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if magic != GGUF_MAGIC:
        raise CaptionerError(
            f"{path}: {what} is not a GGUF file (starts with {magic!r}, expected {GGUF_MAGIC!r}); "
            "convert it with llama.cpp's convert_hf_to_gguf.py"
        )
    return path


def file_id(path: Path, chunk: int = 1 << 20) -> str:
    """Cheap content identity of a (possibly multi-GB) file: size plus first and last MiB."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(chunk)
        handle.seek(max(0, size - chunk))
        tail = handle.read(chunk)
    return sha256_bytes(str(size).encode() + head + tail)


def answer_schema(attributes: Attributes) -> dict:
    """JSON schema of the model's answer for these attributes."""
    caption = {"type": "string", "pattern": CAPTION_PATTERN}
    if attributes.n_polyps == 0:
        return {
            "type": "object",
            "properties": {"caption": caption},
            "required": ["caption"],
            "additionalProperties": False,
        }
    props = {key: {"enum": values} for key, values in ENUMS.items()}
    props["caption"] = caption
    return {
        "type": "object",
        "properties": props,
        "required": [*ENUMS, "caption"],
        "additionalProperties": False,
    }


def check_answer(answer: dict, attributes: Attributes) -> list[str]:
    """Why an answer disagrees with the measurements (empty when it is acceptable)."""
    problems = []
    caption = str(answer.get("caption", "")).strip()
    words = re.findall(r"[A-Za-z]+", caption)
    if not 5 <= len(words) <= 60:
        problems.append(f"caption has {len(words)} words (want 5 to 60)")
    if attributes.n_polyps == 0:
        if "no polyp" not in caption.lower():
            problems.append("caption does not say that no polyp is visible")
        return problems
    for key in ENUMS:
        measured = getattr(attributes, key)
        if answer.get(key) != measured:
            problems.append(f"{key} {answer.get(key)!r} but measured {measured!r}")
    lowered = polyp_clause(caption).lower()
    named = (re.search(rf"\b{re.escape(w)}\b", lowered) for w in COLOUR_WORDS[attributes.colour])
    if not any(named):
        problems.append(f"caption does not name the measured colour {attributes.colour!r}")
    conflicts = colour_conflicts(attributes.colour, caption)
    if conflicts:
        problems.append(f"caption names other colours: {', '.join(conflicts)}")
    return problems


class LlamaCaptioner:
    """Captions with a local GGUF LLaMA through llama-cpp-python."""

    name = "llama"

    def __init__(
        self,
        model: str | os.PathLike,
        *,
        mmproj: str | os.PathLike | None = None,
        n_ctx: int = 2048,
        max_new_tokens: int = 256,
        temperature: float = 0.7,
        retries: int = 3,
        seed: int = 0,
        threads: int | None = None,
        cache_dir: str | os.PathLike | None = None,
    ):
        self.model = check_gguf(model, "LLaMA model")
        self.mmproj = check_gguf(mmproj, "vision projector (mmproj)") if mmproj else None
        if retries < 1:
            raise CaptionerError(f"retries must be at least 1, got {retries}")
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.retries = retries
        self.seed = seed
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.model_id = file_id(self.model)
        self.mmproj_id = file_id(self.mmproj) if self.mmproj else None
        self.version = f"llama-{self.model.name}-{self.model_id[:12]}"
        self.fallback = TemplateCaptioner(seed)

        from llama_cpp import Llama

        handler = None
        if self.mmproj is not None:
            from llama_cpp.llama_chat_format import Llava15ChatHandler

            handler = Llava15ChatHandler(clip_model_path=str(self.mmproj), verbose=False)
        try:
            self.llm = Llama(
                model_path=str(self.model),
                n_ctx=n_ctx,
                seed=seed,
                n_threads=threads,
                chat_handler=handler,
                verbose=False,
            )
        except ValueError as err:
            raise CaptionerError(f"{self.model}: llama.cpp cannot load it ({err})") from err
        log.info("loaded %s (%s)", self.model, self.version)

    def _messages(self, attributes: Attributes, image_png: bytes | None, drop: int) -> list[dict]:
        limit = max(12, 40 - 6 * drop)
        text = (
            f"{PAPER_INSTRUCTION}\n\nMeasurements: {describe_attributes(attributes)}.\n"
            f"Write one sentence of at most {limit} words in this style: {STYLE_EXAMPLE}\n"
            "Answer in JSON with the attributes you describe and the caption."
        )
        content: str | list[dict] = text
        if self.mmproj is not None and image_png is not None:
            uri = "data:image/png;base64," + base64.b64encode(image_png).decode()
            content = [
                {"type": "image_url", "image_url": {"url": uri}},
                {"type": "text", "text": text},
            ]
        return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": content}]

    def _cache_key(
        self, pair_id: str, attributes: Attributes, image_png: bytes | None, drop: int
    ) -> str:
        # The pair id is part of the key: its sampling seed and any fallback text are its own.
        parts = {
            "pair": pair_id,
            "model": self.model_id,
            "mmproj": self.mmproj_id,
            "messages": self._messages(attributes, None, drop),
            "image": sha256_bytes(image_png) if (image_png and self.mmproj) else None,
            "schema": answer_schema(attributes),
            "params": [self.max_new_tokens, self.temperature, self.retries, self.seed],
        }
        return sha256_bytes(json.dumps(parts, sort_keys=True).encode())

    def caption(
        self,
        pair_id: str,
        attributes: Attributes,
        image_png: bytes | None = None,
        drop: int = 0,
    ) -> Caption:
        """Caption one pair (from the cache when the same request was answered before)."""
        key = self._cache_key(pair_id, attributes, image_png, drop)
        cached = self.cache_dir / f"{key}.json" if self.cache_dir else None
        if cached is not None and cached.is_file():
            return Caption(**json.loads(cached.read_text()))
        result = self._generate(pair_id, attributes, image_png, drop)
        if cached is not None:
            write_bytes_atomic(cached, json.dumps(result.__dict__).encode())
        return result

    def _generate(
        self, pair_id: str, attributes: Attributes, image_png: bytes | None, drop: int
    ) -> Caption:
        messages = self._messages(attributes, image_png, drop)
        schema = answer_schema(attributes)
        problems: list[str] = []
        # Each pair samples with its own seed: pairs with equal measurements still get
        # different phrasings, and a pair's answer does not depend on the order of pairs.
        pair_seed = int.from_bytes(
            hashlib.sha256(f"{self.seed}:{pair_id}".encode()).digest()[:4], "little"
        )
        for attempt in range(self.retries):
            out = self.llm.create_chat_completion(
                messages=messages,
                response_format={"type": "json_object", "schema": schema},
                max_tokens=self.max_new_tokens,
                temperature=self.temperature,
                seed=(pair_seed + attempt) % 2**31,
            )
            choice = out["choices"][0]
            raw = choice["message"]["content"] or ""
            try:
                answer = json.loads(raw)
            except json.JSONDecodeError:
                reason = "ran out of tokens" if choice.get("finish_reason") == "length" else ""
                problems.append(f"answer is not valid JSON {reason}".strip())
                continue
            issues = check_answer(answer, attributes)
            if not issues:
                return Caption(" ".join(answer["caption"].split()), self.name)
            problems.append("; ".join(issues))
            log.debug("%s: attempt %d rejected: %s", pair_id, attempt + 1, problems[-1])
        log.warning(
            "%s: LLaMA answers rejected %d times (last: %s); using the template caption",
            pair_id, self.retries, problems[-1],
        )  # fmt: skip
        fallback = self.fallback.caption(pair_id, attributes, drop=drop)
        return Caption(fallback.text, "template-fallback", f"llama rejected: {problems[-1]}")
