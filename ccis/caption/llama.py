"""LLaMA captioner: a local GGUF language model through llama-cpp-python, grounded and checked.

The model phrases the attributes measured from the pixels (``ccis.caption.attributes``):
instruction-tuned models through their chat template, base models through a few-shot
completion prompt (``ccis.caption.prompts``; chosen from the GGUF's metadata unless set).
The answer is JSON, ``{"caption": "..."}``: the prompt opens it and a llama.cpp grammar
writes the rest, so it always parses (``ccis.caption.constrained``). Captions that
contradict the measurements or do not name the measured colour
(``ccis.caption.consistency``) are rejected and sampled again; after the last retry the
pair gets the template caption, marked as a fallback. With a vision projector
(``mmproj``) a LLaVA-style model also sees the image. Results are cached by a hash of
everything that determines them, so a re-run does not generate again.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np

from ccis.caption.attributes import Attributes
from ccis.caption.base import Caption
from ccis.caption.consistency import check_caption
from ccis.caption.constrained import Sampling, generate
from ccis.caption.llama_load import load_llama
from ccis.caption.prompts import (
    ANSWER_OPEN,
    CAPTION_CHARS,
    answer_grammar,
    chat_messages,
    choose_prompt_kind,
    completion_prompt,
    render_chat,
    word_limit,
)
from ccis.caption.template import TemplateCaptioner
from ccis.common.atomic import write_bytes_atomic
from ccis.common.hashing import sha256_bytes

log = logging.getLogger(__name__)

GGUF_MAGIC = b"GGUF"


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


def check_answer(answer: dict, attributes: Attributes) -> list[str]:
    """Why an answer (parsed JSON) disagrees with the measurements (empty when acceptable)."""
    caption = answer.get("caption")
    if not isinstance(caption, str):
        return ["answer has no caption string"]
    return check_caption(" ".join(caption.split()), attributes)


class LlamaCaptioner:
    """Captions with a local GGUF language model through llama-cpp-python."""

    name = "llama"

    def __init__(
        self,
        model: str | os.PathLike,
        *,
        mmproj: str | os.PathLike | None = None,
        prompt: str = "auto",
        n_ctx: int = 2048,
        max_new_tokens: int = 256,
        temperature: float = 0.7,
        repeat_penalty: float = 1.5,
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
        self.sampling = Sampling(temperature=temperature, repeat_penalty=repeat_penalty)
        self.retries = retries
        self.seed = seed
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.model_id = file_id(self.model)
        self.mmproj_id = file_id(self.mmproj) if self.mmproj else None
        self.version = f"llama-{self.model.name}-{self.model_id[:12]}"
        self.fallback = TemplateCaptioner(seed)

        handler = None
        if self.mmproj is not None:
            from llama_cpp.llama_chat_format import Llava15ChatHandler

            handler = Llava15ChatHandler(clip_model_path=str(self.mmproj), verbose=False)
        try:
            self.llm = load_llama(
                self.model, n_ctx=n_ctx, threads=threads, seed=seed, chat_handler=handler
            )
        except ValueError as err:
            raise CaptionerError(f"{self.model}: llama.cpp cannot load it ({err})") from err
        metadata = self.llm.metadata
        self.chat_template = metadata.get("tokenizer.chat_template")
        try:
            self.prompt_kind = choose_prompt_kind(prompt, metadata)
        except ValueError as err:
            raise CaptionerError(str(err)) from err
        if self.prompt_kind == "chat" and not self.chat_template and self.mmproj is None:
            raise CaptionerError(
                f"{self.model}: caption.llama.prompt is 'chat' but the GGUF has no chat "
                "template (tokenizer.chat_template); use 'completion' (or 'auto') for base models"
            )
        log.info(
            "loaded %s (%s): %s prompt (%s)", self.model, self.version, self.prompt_kind,
            "chat template in the GGUF" if self.chat_template else "no chat template: base model",
        )  # fmt: skip

    def prompt(self, attributes: Attributes, drop: int = 0) -> str:
        """The text the model continues for these attributes (its answer follows)."""
        if self.prompt_kind == "completion":
            return completion_prompt(attributes, drop)
        bos = self.llm.detokenize([self.llm.token_bos()], special=True).decode("utf-8", "replace")
        eos = self.llm.detokenize([self.llm.token_eos()], special=True).decode("utf-8", "replace")
        return render_chat(self.chat_template, chat_messages(attributes, drop), bos, eos)

    def _cache_key(
        self, pair_id: str, attributes: Attributes, image_png: bytes | None, drop: int
    ) -> str:
        # The pair id is part of the key: its sampling seed and any fallback text are its own.
        parts = {
            "pair": pair_id,
            "model": self.model_id,
            "mmproj": self.mmproj_id,
            "prompt": self.prompt(attributes, drop) if self.mmproj is None else None,
            "messages": chat_messages(attributes, drop),
            "image": sha256_bytes(image_png) if (image_png and self.mmproj) else None,
            "grammar": answer_grammar(attributes, drop),
            "params": [self.max_new_tokens, self.sampling.__dict__, self.retries, self.seed],
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
        result = self._caption(pair_id, attributes, image_png, drop)
        if cached is not None:
            write_bytes_atomic(cached, json.dumps(result.__dict__).encode())
        return result

    def answer(self, attributes: Attributes, drop: int, rng: np.random.Generator) -> str:
        """One raw answer (JSON text) of the model for these attributes."""
        tokens = self.llm.tokenize(
            self.prompt(attributes, drop).encode("utf-8"),
            add_bos=self.prompt_kind == "completion",
            special=True,
        )
        out = generate(
            self.llm,
            tokens,
            answer_grammar(attributes, drop),
            rng=rng,
            sampling=self.sampling,
            max_tokens=self.max_new_tokens,
        )
        log.debug(
            "%d prompt tokens evaluated, %d generated (%s; %d full-vocabulary grammar checks)",
            out.prompt_tokens, out.tokens, out.finish, out.full_vocab_checks,
        )  # fmt: skip
        return ANSWER_OPEN + out.text

    def _answer_with_image(
        self, attributes: Attributes, image_png: bytes, drop: int, seed: int
    ) -> str:
        # The vision path goes through llama-cpp-python's LLaVA chat handler, which embeds
        # the image; it applies the grammar (from a JSON schema) its own way.
        messages = chat_messages(attributes, drop)
        uri = "data:image/png;base64," + base64.b64encode(image_png).decode()
        messages[1]["content"] = [
            {"type": "image_url", "image_url": {"url": uri}},
            {"type": "text", "text": messages[1]["content"]},
        ]
        schema = {
            "type": "object",
            "properties": {
                "caption": {
                    "type": "string",
                    "pattern": f"^{CAPTION_CHARS}{{20,{7 * word_limit(drop)}}}$",
                }
            },
            "required": ["caption"],
            "additionalProperties": False,
        }
        out = self.llm.create_chat_completion(
            messages=messages,
            response_format={"type": "json_object", "schema": schema},
            max_tokens=self.max_new_tokens,
            temperature=self.sampling.temperature,
            seed=seed,
        )
        return out["choices"][0]["message"]["content"] or ""

    def _caption(
        self, pair_id: str, attributes: Attributes, image_png: bytes | None, drop: int
    ) -> Caption:
        problems: list[str] = []
        # Each pair samples with its own seed: pairs with equal measurements still get
        # different phrasings, and a pair's answer does not depend on the order of pairs.
        pair_seed = int.from_bytes(
            hashlib.sha256(f"{self.seed}:{pair_id}".encode()).digest()[:4], "little"
        )
        for attempt in range(self.retries):
            if self.mmproj is not None and image_png is not None:
                raw = self._answer_with_image(
                    attributes, image_png, drop, (pair_seed + attempt) % 2**31
                )
            else:
                raw = self.answer(attributes, drop, np.random.default_rng([pair_seed, attempt]))
            try:
                answer = json.loads(raw)
            except json.JSONDecodeError:
                problems.append("answer is not valid JSON (ran out of tokens?)")
                continue
            issues = check_answer(answer, attributes)
            if not issues:
                text = " ".join(answer["caption"].split())
                if not text.endswith("."):  # a sentence, like the template's
                    text = text.rstrip(",;:- ") + "."
                return Caption(text, self.name)
            problems.append("; ".join(issues))
            log.debug("%s: attempt %d rejected: %s", pair_id, attempt + 1, problems[-1])
        log.warning(
            "%s: LLaMA answers rejected %d times (last: %s); using the template caption",
            pair_id, self.retries, problems[-1],
        )  # fmt: skip
        fallback = self.fallback.caption(pair_id, attributes, drop=drop)
        return Caption(fallback.text, "template-fallback", f"llama rejected: {problems[-1]}")
