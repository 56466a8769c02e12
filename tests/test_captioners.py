"""Template captions, token budgets and the LLaMA captioner on a tiny random GGUF."""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest

from ccis.caption.attributes import measure_attributes
from ccis.caption.base import Caption
from ccis.caption.consistency import check_caption, contradicting_words, named_attributes
from ccis.caption.constrained import Sampling, accepts, generate
from ccis.caption.llama import CaptionerError, LlamaCaptioner, check_answer, check_gguf
from ccis.caption.llama_load import extra_buffers_safe
from ccis.caption.phrases import COLOUR_WORDS, colour_conflicts
from ccis.caption.prompts import EXAMPLES, answer_grammar, choose_prompt_kind
from ccis.caption.template import PATTERNS, TemplateCaptioner
from ccis.caption.tiny_gguf import write_tiny_llama_gguf
from ccis.caption.tokens import TokenCounter, fit_caption
from ccis.data.phantom import render_phantom
from conftest import record_answers


@pytest.fixture(scope="module")
def attrs():
    out = []
    for i in range(30):
        s = render_phantom(4, 0, i, 160, 144)
        out.append(measure_attributes(s.image, s.mask))
    return out


def test_template_is_seeded_diverse_and_grounded(attrs):
    cap = TemplateCaptioner(seed=3)
    texts = [cap.caption(f"id{i}", a).text for i, a in enumerate(attrs)]
    assert texts == [
        TemplateCaptioner(seed=3).caption(f"id{i}", a).text for i, a in enumerate(attrs)
    ]
    assert texts != [
        TemplateCaptioner(seed=4).caption(f"id{i}", a).text for i, a in enumerate(attrs)
    ]
    assert len(set(texts)) == len(texts)
    openings = {t.split()[0] for t in texts}
    assert len(openings) >= 2  # several sentence patterns in use
    for text, a in zip(texts, attrs, strict=True):
        assert any(w in text.lower() for w in COLOUR_WORDS[a.colour]), text
        assert not colour_conflicts(a.colour, text), text
        assert text.endswith(".") and "  " not in text
        assert " a a" not in text.lower() and "A i" not in text  # articles agree


def test_template_drop_levels_shorten(attrs):
    cap = TemplateCaptioner()
    a = next(x for x in attrs if x.debris or x.folds)
    lengths = [len(cap.caption("x", a, drop=d).text) for d in range(6)]
    assert lengths == sorted(lengths, reverse=True) and lengths[-1] < lengths[0]
    assert " of the view" not in cap.caption("x", a, drop=1).text


def test_multiple_and_no_polyps(attrs):
    cap = TemplateCaptioner()
    two = dataclasses.replace(attrs[0], n_polyps=2)
    assert cap.caption("x", two).text.startswith("Two polyps are visible.")
    none = dataclasses.replace(attrs[0], n_polyps=0)
    assert cap.caption("x", none).text.startswith("No polyp is visible")


def test_token_counter_default_is_clip_bpe():
    count = TokenCounter()
    text = "The polyp is pink, round, smooth-textured, and slightly swollen."
    assert count(text) == 18  # 16 BPE tokens (polyp = poly+p) + start and end
    assert count("lobulated") == 3 + 2


def test_token_counter_from_a_tokenizer_folder(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["[UNK]", "the", "polyp", "is", "pink", "."]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(tmp_path)
    count = TokenCounter(tmp_path)
    assert count("the polyp is pink .") == 5
    with pytest.raises(ValueError, match="cannot load a tokenizer"):
        TokenCounter(tmp_path / "missing")


def test_fit_caption_shortens_then_cuts(attrs):
    cap = TemplateCaptioner()
    count = TokenCounter()
    a = next(x for x in attrs if x.debris or x.folds)
    full, n_full, cut = fit_caption(lambda d: cap.caption("x", a, None, d), count, 77)
    assert not cut and n_full <= 77
    short, n_short, cut = fit_caption(lambda d: cap.caption("x", a, None, d), count, n_full - 1)
    assert not cut and n_short < n_full
    for budget in (8, 10, 13):
        tiny, n_tiny, cut = fit_caption(lambda d: cap.caption("x", a, None, d), count, budget)
        assert cut and n_tiny <= budget and "cut" in tiny.notes
        assert tiny.text.endswith(".") and not tiny.text.endswith("..")


def test_check_answer(attrs):
    a = next(x for x in attrs if x.colour == "red")
    good = {"caption": "The polyp is reddish and swollen against pink mucosa."}
    assert check_answer(good, a) == []
    problems = check_answer({"caption": "The polyp is pale and swollen against the mucosa."}, a)
    assert any("does not name the measured colour" in p for p in problems)
    assert any("calls the colour pale" in p for p in problems)
    assert check_answer({"text": "no caption key"}, a) == ["answer has no caption string"]
    # "red" inside "covered" is not the colour red.
    covered = {"caption": "A polyp covered in mucus, against pink mucosa."}
    assert any("does not name the measured colour" in p for p in check_answer(covered, a))


def test_check_caption_reads_every_attribute(attrs):
    a = dataclasses.replace(
        attrs[0], colour="pink", shape="round", texture="smooth", swelling="slight",
        size="small", location="upper left", debris=False, folds=True, highlights=False,
        mucosa="red", n_polyps=1,
    )  # fmt: skip
    ok = "A small pink polyp in the upper left, round, smooth and slightly raised, against reddish mucosa with folds."
    assert check_caption(ok, a) == []
    assert named_attributes(ok, a) == {"colour", "shape", "texture", "swelling"}
    # The case: the same polyp called round and irregular.
    for text, expect in [
        (ok.replace("round,", "round and irregular,"), "calls the shape irregular"),
        (ok.replace("smooth", "granular"), "calls the texture rough"),
        (ok.replace("slightly raised", "markedly swollen"), "calls the swelling significant"),
        (ok.replace("small", "large"), "calls the size large"),
        (ok.replace("upper left", "lower left"), "places the polyp 'lower'"),
        (ok.replace("with folds", "with yellowish debris"), "mentions debris"),
        (ok.replace("with folds", "with folds and bright reflections"), "mentions highlights"),
    ]:
        assert any(expect in p for p in check_caption(text, a)), (text, check_caption(text, a))
    # Colours of the wall are not the polyp's; an incomplete caption is still consistent.
    short = "A pink polyp, round, against reddish mucosa."
    assert check_caption(short, a) == [] and named_attributes(short, a) == {"colour", "shape"}


def test_template_captions_pass_the_checks(attrs):
    cap = TemplateCaptioner(seed=5)
    for i, a in enumerate(attrs):
        for drop in range(4):
            text = cap.caption(f"t{i}", a, drop=drop).text
            assert check_caption(text, a) == [], text
            assert named_attributes(text, a) == {"colour", "shape", "texture", "swelling"}, text


def test_contradicting_words(attrs):
    a = dataclasses.replace(attrs[0], colour="red", shape="oval", location="centre right",
                            debris=False, folds=True)  # fmt: skip
    words = contradicting_words(a)
    assert {"pink", "pale", "round", "irregular", "left", "upper", "debris"} <= set(words)
    assert not {"red", "reddish", "oval", "right", "centre", "fold"} & set(words)


def test_choose_prompt_kind():
    assert choose_prompt_kind("auto", {"tokenizer.chat_template": "{{ x }}"}) == "chat"
    assert choose_prompt_kind("auto", {"general.architecture": "gemma3"}) == "completion"
    assert choose_prompt_kind("completion", {"tokenizer.chat_template": "t"}) == "completion"
    with pytest.raises(ValueError, match="prompt kind must be one of"):
        choose_prompt_kind("instruct", {})


def test_extra_buffers_are_off_where_amx_is_built_in():
    # The AMX build's tile kernel crashes batched decoding (ccis.caption.llama_load).
    assert not extra_buffers_safe(
        "CPU : AVX512 = 1 | AVX512_VNNI = 1 | AMX_INT8 = 1 | REPACK = 1 |"
    )
    assert extra_buffers_safe("CPU : SSE3 = 1 | AVX2 = 1 | FMA = 1 | OPENMP = 1 | REPACK = 1 |")


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    return write_tiny_llama_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf", seed=0)


def test_tiny_gguf_is_deterministic(tmp_path, tiny_gguf):
    again = write_tiny_llama_gguf(tmp_path / "again.gguf", seed=0)
    assert again.read_bytes() == tiny_gguf.read_bytes()


def test_extra_buffers_setting_reaches_the_model(tiny_gguf, monkeypatch):
    import ccis.caption.llama_load as load

    monkeypatch.setattr(load, "system_info", lambda: "CPU : AVX2 = 1 | REPACK = 1 |")
    assert load.load_llama(tiny_gguf, n_ctx=256).model_params.use_extra_bufts
    monkeypatch.setattr(load, "system_info", lambda: "CPU : AVX512 = 1 | AMX_INT8 = 1 |")
    llm = load.load_llama(tiny_gguf, n_ctx=256)
    assert not llm.model_params.use_extra_bufts
    llm.eval(llm.tokenize(b"a polyp on the wall", add_bos=True))  # a batch of several tokens
    import llama_cpp

    assert llama_cpp.llama_model_default_params().use_extra_bufts  # only that load changed


def test_llama_threads_wait_passively_unless_told_otherwise(tiny_gguf, monkeypatch):
    from ccis.caption.llama_load import load_llama

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    load_llama(tiny_gguf, n_ctx=256)
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    load_llama(tiny_gguf, n_ctx=256)
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"


def test_examples_fit_the_grammar_and_the_checks(tiny_gguf):
    from llama_cpp import Llama

    llm = Llama(str(tiny_gguf), vocab_only=True, verbose=False)  # one token per character
    for a, caption in EXAMPLES:
        assert check_caption(caption, a) == [], caption
        assert named_attributes(caption, a) == {"colour", "shape", "texture", "swelling"}
        grammar = answer_grammar(a, 0)
        assert accepts(llm, grammar, caption + '"}'), caption
        # The grammar keeps out what contradicts the measurements or was not seen.
        other = {"red": "pink", "pink": "red", "pale": "red"}[a.colour]
        assert not accepts(llm, grammar, caption.replace(f" {a.colour} ", f" {other} ") + '"}')
        if not a.debris:
            assert not accepts(llm, grammar, caption[:-1] + ' and debris."}')
        assert not accepts(llm, grammar, caption + '"}  ')  # nothing after the answer


def test_generate_follows_the_grammar_and_reuses_the_prefix(tiny_gguf):
    from llama_cpp import Llama

    llm = Llama(str(tiny_gguf), n_ctx=512, verbose=False)
    prefix = llm.tokenize(b"<|system|> the polyp is round and the mucosa is pink.", add_bos=True)
    grammar = 'root ::= ("pink" | "red" | "pale") " polyp, " ("round" | "oval") "."\n'
    rng = np.random.default_rng(0)
    one = prefix + llm.tokenize(b" A", add_bos=False)
    first = generate(llm, one, grammar, rng=rng)
    assert first.finish == "grammar" and first.prompt_tokens == len(one)
    assert first.text.split(" polyp, ")[0] in ("pink", "red", "pale") and first.text.endswith(".")
    # Same prefix, new suffix: only what differs is evaluated.
    two = prefix + llm.tokenize(b" The", add_bos=False)
    again = generate(llm, two, grammar, rng=rng, sampling=Sampling(temperature=0))
    assert again.prompt_tokens == len(two) - len(os.path.commonprefix([one, two])) < 6
    with pytest.raises(ValueError, match="exceed the context"):
        generate(llm, prefix * 40, grammar, rng=rng, max_tokens=300)


def test_llama_captioner_runs_for_real_and_caches(tmp_path, tiny_gguf, attrs):
    cap = LlamaCaptioner(tiny_gguf, retries=2, cache_dir=tmp_path / "cache")
    assert cap.prompt_kind == "chat"  # the tiny model's GGUF has a chat template
    calls = record_answers(cap)
    result = cap.caption("p1", attrs[0])
    # Random weights inside the caption grammar: valid JSON whose caption names the
    # measured attributes and contradicts none, so it is accepted.
    assert len(calls) == 1
    answer = json.loads(calls[0])
    assert set(answer) == {"caption"}
    assert result.captioner == "llama" and check_caption(result.text, attrs[0]) == []
    assert named_attributes(result.text, attrs[0]) == {"colour", "shape", "texture", "swelling"}
    # The second request is served from the cache: no generation at all.
    cap.answer = lambda *a: pytest.fail("generated again")
    assert cap.caption("p1", attrs[0]) == result
    assert len(list((tmp_path / "cache").glob("*.json"))) == 1


def test_llama_captioner_retries_then_falls_back(tiny_gguf, attrs):
    cap = LlamaCaptioner(tiny_gguf, retries=3)
    a = next(x for x in attrs if x.colour == "pink")
    answers = iter(
        [
            '{"caption": "The polyp is red and round against the mucosa.',  # cut off
            '{"caption": "The polyp is red and round against the mucosa."}',
            '{"caption": "The polyp is pinkish,   and raised against pink mucosa"}',
        ]
    )
    cap.answer = lambda *args: next(answers)
    assert cap.caption("p2", a) == Caption(
        "The polyp is pinkish, and raised against pink mucosa.", "llama"
    )
    cap.answer = lambda *args: '{"caption": "The polyp is red against the mucosa."}'
    result = cap.caption("p3", a)
    assert result.captioner == "template-fallback" and "calls the colour red" in result.notes
    assert result.text == TemplateCaptioner(0).caption("p3", a).text


def test_llama_prompts_carry_instruction_and_measurements(tiny_gguf, attrs):
    chat = LlamaCaptioner(tiny_gguf)
    prompt = chat.prompt(attrs[0])
    assert prompt.startswith("<|system|>") and prompt.endswith('<|assistant|>\n{"caption": "')
    assert "describe the polyps in terms of color, shape, texture" in prompt
    assert f"colour {attrs[0].colour}" in prompt and f"shape {attrs[0].shape}" in prompt
    completion = LlamaCaptioner(tiny_gguf, prompt="completion")
    text = completion.prompt(attrs[0])
    assert text.count("Measurements:") == len(EXAMPLES) + 1 and "<|system|>" not in text
    assert text.endswith('Answer: {"caption": "')
    # Consecutive prompts share everything but the pair's measurements (KV cache reuse).
    other = completion.prompt(attrs[1])
    common = len(os.path.commonprefix([text, other]))
    assert common > 0.8 * len(text)


def test_missing_or_invalid_model_files(tmp_path):
    with pytest.raises(CaptionerError, match="missing.gguf: LLaMA model not found"):
        LlamaCaptioner(tmp_path / "missing.gguf")
    bad = tmp_path / "model.bin"
    bad.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(CaptionerError, match="model.bin: LLaMA model is not a GGUF file"):
        LlamaCaptioner(bad)
    truncated = tmp_path / "trunc.gguf"
    truncated.write_bytes(b"GGUF" + b"\0" * 60)
    with pytest.raises(CaptionerError, match="trunc.gguf: llama.cpp cannot load it"):
        LlamaCaptioner(truncated)
    with pytest.raises(CaptionerError, match="vision projector"):
        check_gguf(bad, "vision projector (mmproj)")


def test_pattern_count_is_what_the_docs_say():
    assert len(PATTERNS) == 4
