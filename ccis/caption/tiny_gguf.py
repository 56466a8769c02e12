"""Write a tiny LLaMA-architecture GGUF file with random weights, for tests and demos.

The file is never a real model: its weights are seeded noise, so whatever it generates is
gibberish. What it does have is everything llama.cpp (through ``llama-cpp-python``) needs to
load it and to run grammar-constrained generation in milliseconds on a CPU:

* a SentencePiece-style ("llama") vocabulary in which every printable ASCII character is a
  single token and every byte has a ``<0xNN>`` fallback token, so a JSON grammar can always
  spell its output;
* about 170 whole-word tokens (common English and colonoscopy words), so the gibberish
  reads a little like text;
* a logit bias built into the weights that keeps raw control characters out of strings
  (strict JSON rejects them) and ends strings and answers after a handful of words;
* a small Jinja chat template, so ``create_chat_completion`` works without a ``chat_format``.

The same arguments always give a byte-identical file, so a test or a workflow rule can
regenerate it and compare hashes.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ccis.common.atomic import atomic_path

__all__ = ["CHAT_TEMPLATE", "write_tiny_llama_gguf"]

# SentencePiece writes a space as U+2581; llama.cpp turns it back into " " when decoding.
_SPACE = "\u2581"

# Token types as GGUF stores them (gguf.TokenType); plain ints keep the vocabulary builder
# free of the optional ``gguf`` import.
_NORMAL, _UNKNOWN, _CONTROL, _BYTE = 1, 2, 3, 6

# Value of the constant "bias" dimension of every token embedding (see write_tiny_llama_gguf).
_BIAS_CHANNEL = 2.0
# Logit bonus for '"' and end-of-sequence; against the ~170 whole-word tokens this ends a
# string or a free-text answer after about ten tokens when sampling at temperature 1.
_END_BIAS = 2.5

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
"""Minimal chat template; the roles are spelled out in plain characters, not special tokens."""

# Kept as one block of text so the list stays readable; split once at import.
_WORD_TEXT = """
the a an of and or in on at to with from by for as is are was be been it its this that
these those there here not no yes very more most less few many some all any each both
one two three four five small large big tiny round flat oval long short wide narrow
thin thick smooth rough soft firm wet dry shiny dull bright dark light clear visible
left right upper lower top bottom middle center centre side edge near far inside outside
image view frame scene picture photo caption shows showing seen appears appear looks
colour color pale pink red white yellow orange brown purple blue green grey gray black
polyp polyps colon colonoscopy mucosa mucosal lumen wall fold folds tissue surface
lesion mass growth vessel vessels blood bleeding stool fluid bubble bubbles reflection
sessile pedunculated stalk base head lobe lobulated texture pattern vascular inflamed
normal healthy abnormal mild moderate severe area region part patch spot spots
"""
_WORDS = _WORD_TEXT.split()


def _vocabulary() -> tuple[list[str], list[float], list[int]]:
    """Return the token texts, scores and types of the tiny SentencePiece vocabulary."""
    tokens: list[str] = ["<unk>", "<s>", "</s>", "<pad>"]
    types: list[int] = [_UNKNOWN, _CONTROL, _CONTROL, _CONTROL]
    # Byte fallback: llama.cpp encodes any character missing from the vocabulary as bytes,
    # and a grammar can still emit any UTF-8 text through these.
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [_BYTE] * 256
    scores: list[float] = [0.0] * len(tokens)

    # Every printable ASCII character as one token; space in SentencePiece spelling.
    singles = [_SPACE] + [chr(c) for c in range(0x21, 0x7F)]
    tokens += singles
    scores += [-1000.0] * len(singles)
    types += [_NORMAL] * len(singles)

    # Whole words with a leading space, plus every prefix of them: SentencePiece's tokenizer
    # only merges two pieces whose concatenation is itself a token, so the prefixes are the
    # path that lets "▁polyp" be reached from single characters. Longer pieces score higher
    # so that merges prefer them.
    seen = set(tokens)
    for word in _WORDS:
        piece = _SPACE + word
        for end in range(2, len(piece) + 1):
            prefix = piece[:end]
            if prefix not in seen:
                seen.add(prefix)
                tokens.append(prefix)
                scores.append(float(end - 100))
                types.append(_NORMAL)
    return tokens, scores, types


def _logit_prior(tokens: list[str], types: list[int]) -> np.ndarray:
    """Return a logit bias per token that makes random output look like JSON-safe text.

    Bytes 0x00-0x1F are pushed far down: llama-cpp-python's JSON-schema converter lets a
    string hold any character, so random weights would otherwise emit raw control
    characters, which strict JSON parsers reject. A grammar that requires one can still
    emit it, because the grammar masks every other token first. Whole words are preferred
    over word fragments, single characters and other bytes, so the gibberish reads as
    words. The double quote and end-of-sequence are favoured so that strings and free text
    end after a handful of words instead of running to max_tokens.
    """
    words = {_SPACE + w for w in _WORDS}
    prior = np.zeros(len(tokens), dtype=np.float64)
    for i, (text, kind) in enumerate(zip(tokens, types, strict=True)):
        if kind == _BYTE:
            prior[i] = -40.0 if int(text[3:5], 16) < 0x20 else -4.0
        elif kind in (_UNKNOWN, _CONTROL):
            prior[i] = -40.0
        elif len(text) == 1:
            prior[i] = -1.0
        elif text not in words:
            prior[i] = -3.0
    prior[tokens.index('"')] = _END_BIAS
    prior[tokens.index("</s>")] = _END_BIAS
    return prior


def write_tiny_llama_gguf(
    path: str | os.PathLike,
    *,
    seed: int = 0,
    n_embd: int = 64,
    n_layer: int = 2,
    n_head: int = 4,
    n_ff: int = 128,
    context_length: int = 2048,
) -> Path:
    """Write a tiny random-weight LLaMA GGUF model to ``path`` and return the path.

    The weights are float32 noise drawn from ``numpy.random.default_rng(seed)``; the same
    arguments give a byte-identical file. The file is written atomically (temporary sibling,
    then rename), and missing parent folders are created.
    """
    # gguf is a test extra, not a runtime dependency, so import it only when writing.
    try:
        import gguf
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "writing a tiny GGUF model needs the 'gguf' package (pip install gguf)"
        ) from err

    if min(n_embd, n_layer, n_head, n_ff, context_length) < 1:
        raise ValueError("all model sizes must be positive")
    if n_embd % n_head or (n_embd // n_head) % 2:
        # RoPE rotates pairs of dimensions, so each head needs an even width.
        raise ValueError(f"n_embd={n_embd} must split into {n_head} heads of even width")
    head_dim = n_embd // n_head

    tokens, scores, types = _vocabulary()
    n_vocab = len(tokens)
    rng = np.random.default_rng(seed)

    def weight(n_out: int, n_in: int, gain: float = 1.0) -> np.ndarray:
        # numpy shape (n_out, n_in) is ggml's (n_in, n_out), the layout llama.cpp expects.
        # Dividing by sqrt(n_in) keeps each product near the size of its input.
        w = rng.standard_normal((n_out, n_in)) * (gain / np.sqrt(n_in))
        return w.astype(np.float32)

    # LLaMA has no bias terms, so residual dimension 0 is turned into one: every token
    # embeds the same constant there and no layer writes to it. The final RMS norm then
    # leaves a roughly constant positive value in that dimension, and column 0 of the
    # output matrix acts as a per-token logit bias (see _logit_prior).
    token_embd = weight(n_vocab, n_embd)
    token_embd[:, 0] = _BIAS_CHANNEL
    # The random part of the residual stream keeps a norm of about one (the embeddings
    # have unit-norm rows and the blocks add little), so this is the typical value of
    # dimension 0 after the final norm; measured logits match the prior within ~10%.
    residual_norm = np.sqrt(_BIAS_CHANNEL**2 + 1.0)
    bias_scale = _BIAS_CHANNEL * np.sqrt(n_embd) / residual_norm
    output = weight(n_vocab, n_embd)
    output[:, 0] = _logit_prior(tokens, types) / bias_scale

    def from_residual(n_out: int) -> np.ndarray:
        # Projections that read the residual stream ignore dimension 0: its constant would
        # otherwise dominate every layer's input and make all positions alike.
        w = weight(n_out, n_embd)
        w[:, 0] = 0.0
        return w

    def into_residual(n_in: int) -> np.ndarray:
        # Projections back into the residual stream: small enough that the random part
        # does not drown the bias channel, and never writing to dimension 0.
        w = weight(n_embd, n_in, gain=1.0 / np.sqrt(n_embd))
        w[0, :] = 0.0
        return w

    target = Path(path)
    with atomic_path(target) as tmp:
        writer = gguf.GGUFWriter(tmp, arch="llama")
        writer.add_name("ccis tiny random llama (not a real model)")
        writer.add_description("Random weights for tests and demos; output is gibberish.")
        writer.add_file_type(int(gguf.LlamaFileType.ALL_F32))
        writer.add_context_length(context_length)
        writer.add_embedding_length(n_embd)
        writer.add_block_count(n_layer)
        writer.add_feed_forward_length(n_ff)
        writer.add_head_count(n_head)
        writer.add_head_count_kv(n_head)
        writer.add_rope_dimension_count(head_dim)
        writer.add_rope_freq_base(10000.0)
        writer.add_layer_norm_rms_eps(1e-5)
        writer.add_vocab_size(n_vocab)

        writer.add_tokenizer_model("llama")
        writer.add_token_list(tokens)
        writer.add_token_scores(scores)
        writer.add_token_types(types)
        writer.add_unk_token_id(0)
        writer.add_bos_token_id(1)
        writer.add_eos_token_id(2)
        writer.add_pad_token_id(3)
        writer.add_add_bos_token(True)
        writer.add_add_eos_token(False)
        writer.add_chat_template(CHAT_TEMPLATE)

        ones = np.ones(n_embd, dtype=np.float32)
        writer.add_tensor("token_embd.weight", token_embd)
        for i in range(n_layer):
            blk = f"blk.{i}"
            writer.add_tensor(f"{blk}.attn_norm.weight", ones.copy())
            writer.add_tensor(f"{blk}.attn_q.weight", from_residual(n_embd))
            writer.add_tensor(f"{blk}.attn_k.weight", from_residual(n_embd))
            writer.add_tensor(f"{blk}.attn_v.weight", from_residual(n_embd))
            writer.add_tensor(f"{blk}.attn_output.weight", into_residual(n_embd))
            writer.add_tensor(f"{blk}.ffn_norm.weight", ones.copy())
            writer.add_tensor(f"{blk}.ffn_gate.weight", from_residual(n_ff))
            writer.add_tensor(f"{blk}.ffn_up.weight", from_residual(n_ff))
            writer.add_tensor(f"{blk}.ffn_down.weight", into_residual(n_ff))
        writer.add_tensor("output_norm.weight", ones.copy())
        writer.add_tensor("output.weight", output)

        try:
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
        finally:
            writer.close()
    return target
