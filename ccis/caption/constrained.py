"""Grammar-constrained generation with llama-cpp-python, fast on large vocabularies.

llama-cpp-python's own sampler chain applies the grammar to every token of the
vocabulary at every step, before top-k. Gemma 3 has 262,144 tokens, and on this
project's 2-core machine that check costs about as much again as the forward pass of a
270M model (benchmarks/caption_bench.py measures both). We sample the way llama.cpp's own
``common_sampler`` does: draw a token from the top-k / top-p distribution first, ask the
grammar whether it may follow; only when it may not, filter the top-k candidates, and
only when none of those fits, the whole vocabulary. The result has the same distribution
as filtering first (the grammar-allowed part of the truncated distribution), at the cost
of one grammar check per token.

Prompts sharing a prefix with the previous one reuse its KV cache: only the new suffix
is evaluated (llama.cpp keeps the common tokens).
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


class GrammarError(ValueError):
    """llama.cpp could not parse a grammar."""


class Grammar:
    """A llama.cpp grammar sampler used as a token filter."""

    def __init__(self, llm, gbnf: str, root: str = "root"):
        import llama_cpp

        self._lib = llama_cpp
        self._ptr = llama_cpp.llama_sampler_init_grammar(
            llm._model.vocab, gbnf.encode("utf-8"), root.encode("utf-8")
        )
        if not self._ptr:
            raise GrammarError(f"llama.cpp cannot parse this grammar:\n{gbnf}")
        self._buffers: dict[int, ctypes.Array] = {}

    def allowed(self, tokens: np.ndarray) -> np.ndarray:
        """Boolean mask: which of ``tokens`` the grammar accepts next."""
        n = len(tokens)
        if n not in self._buffers:
            self._buffers[n] = (self._lib.llama_token_data * n)()
        data = self._buffers[n]
        view = np.ctypeslib.as_array(data)
        view["id"] = tokens
        view["logit"] = 0.0
        view["p"] = 0.0
        array = self._lib.llama_token_data_array(
            data=ctypes.cast(data, self._lib.llama_token_data_p), size=n, selected=-1, sorted=False
        )
        self._lib.llama_sampler_apply(self._ptr, ctypes.byref(array))
        return np.isfinite(view["logit"])

    def accept(self, token: int) -> None:
        """Advance the grammar over ``token``."""
        self._lib.llama_sampler_accept(self._ptr, int(token))

    def close(self) -> None:
        if self._ptr:
            self._lib.llama_sampler_free(self._ptr)
            self._ptr = None

    def __enter__(self) -> Grammar:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass(frozen=True)
class Sampling:
    """Sampling settings; temperature 0 picks the most likely allowed token."""

    temperature: float = 0.7
    top_k: int = 40
    top_p: float = 0.95
    # Subtracted from the logit of each word token (three or more letters) already written
    # in this answer: small models otherwise list the same attribute again and again.
    repeat_penalty: float = 0.0


@dataclass
class Generation:
    """What one constrained generation produced."""

    text: str
    tokens: int  # generated tokens
    prompt_tokens: int  # tokens of the prompt evaluated now (not reused from the cache)
    finish: str  # "grammar" (the grammar completed), "eog", or "length"
    full_vocab_checks: int  # steps on which no top-k candidate fitted the grammar


def evaluate_prompt(llm, tokens: Sequence[int]) -> int:
    """Evaluate ``tokens``, reusing the KV cache of their longest common prefix with the
    previous prompt. Returns the number of tokens evaluated now."""
    tokens = list(tokens)
    cached = llm.input_ids[: llm.n_tokens].tolist()
    common = 0
    for a, b in zip(cached, tokens, strict=False):
        if a != b:
            break
        common += 1
    common = min(common, len(tokens) - 1)  # the last token is evaluated again for its logits
    if common <= 0 or not llm._ctx.kv_cache_seq_rm(-1, common, -1):
        llm.reset()
        common = 0
    llm.n_tokens = common
    llm.eval(tokens[common:])
    return len(tokens) - common


def _logits(llm) -> np.ndarray:
    import llama_cpp

    pointer = llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1)
    return np.ctypeslib.as_array(pointer, shape=(llm.n_vocab(),)).astype(np.float64)


def _pick(logits: np.ndarray, sampling: Sampling, rng: np.random.Generator) -> int:
    """Index into ``logits`` drawn from softmax(logits / T) truncated to top-p."""
    if sampling.temperature <= 0:
        return int(np.argmax(logits))
    z = (logits - logits.max()) / sampling.temperature
    p = np.exp(z)
    p /= p.sum()
    order = np.argsort(-p)
    keep = order[: max(1, int(np.searchsorted(np.cumsum(p[order]), sampling.top_p)) + 1)]
    q = p[keep] / p[keep].sum()
    return int(keep[rng.choice(len(keep), p=q)])


def generate(
    llm,
    prompt_tokens: Sequence[int],
    gbnf: str,
    *,
    rng: np.random.Generator,
    sampling: Sampling = Sampling(),
    max_tokens: int = 128,
) -> Generation:
    """Generate from ``prompt_tokens`` until ``gbnf`` is complete (or ``max_tokens``)."""
    import llama_cpp

    if len(prompt_tokens) + max_tokens > llm.n_ctx():
        raise ValueError(
            f"prompt ({len(prompt_tokens)} tokens) plus {max_tokens} new tokens exceed the "
            f"context of {llm.n_ctx()} tokens (raise caption.llama.n_ctx)"
        )
    vocab = llm._model.vocab
    eos = np.array([llama_cpp.llama_vocab_eos(vocab)])
    evaluated = evaluate_prompt(llm, prompt_tokens)
    out: list[int] = []
    words_written: set[int] = set()
    finish, fallbacks = "length", 0
    with Grammar(llm, gbnf) as grammar:
        for _ in range(max_tokens):
            logits = _logits(llm)
            if sampling.repeat_penalty and words_written:
                logits[list(words_written)] -= sampling.repeat_penalty
            k = min(sampling.top_k, len(logits)) if sampling.temperature > 0 else 1
            top = np.argpartition(-logits, k - 1)[:k]
            top = top[np.argsort(-logits[top])]
            token = int(top[_pick(logits[top], sampling, rng)])
            if not grammar.allowed(np.array([token]))[0]:
                ok = grammar.allowed(top)
                if ok.any():
                    cand = top[ok]
                else:  # nothing likely fits: let the grammar choose from everything
                    fallbacks += 1
                    everything = np.arange(len(logits))
                    cand = everything[grammar.allowed(everything)]
                    if len(cand) == 0:
                        finish = "stuck"
                        break
                    best = np.argsort(-logits[cand])[: max(k, 1)]
                    cand = cand[best]
                token = int(cand[_pick(logits[cand], sampling, rng)])
            if llama_cpp.llama_vocab_is_eog(vocab, token):
                finish = "eog"
                break
            grammar.accept(token)
            out.append(token)
            piece = llm.detokenize([token]).decode("utf-8", "replace")
            if sum(c.isalpha() for c in piece) >= 3:
                words_written.add(token)
            # The answer is whole once the grammar would let it end here.
            if grammar.allowed(eos)[0]:
                finish = "grammar"
                break
            llm.eval([token])
    text = llm.detokenize(out).decode("utf-8", "replace")
    return Generation(text, len(out), evaluated, finish, fallbacks)


def accepts(llm, gbnf: str, text: str) -> bool:
    """Whether ``gbnf`` accepts ``text`` whole, as ``llm`` tokenizes it (for checks)."""
    import llama_cpp

    tokens = llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)
    if tokens and not text.startswith(" ") and llm.detokenize(tokens[:1]) == b" ":
        tokens = tokens[1:]  # SentencePiece's space before the first word
    eos = np.array([llama_cpp.llama_vocab_eos(llm._model.vocab)])
    with Grammar(llm, gbnf) as grammar:
        for token in tokens:
            if not grammar.allowed(np.array([token]))[0]:
                return False
            grammar.accept(token)
        return bool(grammar.allowed(eos)[0])
