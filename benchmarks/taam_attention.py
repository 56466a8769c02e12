"""TAAM's biased self-attention, four ways, at SD v1.5's first-block shape on the CPU.

``softmax(QKᵀ/√d + log(1 + λ·S_j))·V`` with λ learnable, forward and backward, at 4096
tokens (a 512² image's 64² latent), 8 heads of 40 channels, batch 1, one thread:

- ``plain``: SDPA without any bias (the floor);
- ``key-channel``: the bias as one extra query/key channel, padded to a multiple of 8
  (``ccis.diffusion.taam.key_bias_attention``, what TAAM uses);
- ``value-weights``: ``SDPA(Q, K, [w⊙V, w])`` divided by its last channel, Q, K and V
  padded to one width (the CPU's flash kernel needs equal widths);
- ``value-weights-unpadded``: the same with a 41-channel V;
- ``float-mask``: the bias as SDPA's float ``attn_mask`` (TAAM before; a mask that needs
  a gradient has no fused kernel).

Each variant runs in its own process (its own peak memory); CPU seconds per forward +
backward (mean of 3 after a warm-up) and peak resident memory.

    python benchmarks/taam_attention.py
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

VARIANTS = ("plain", "key-channel", "value-weights", "value-weights-unpadded", "float-mask")


def worker(variant: str, tokens: int, heads: int, width: int) -> dict:
    import torch
    import torch.nn.functional as F

    from ccis.diffusion.taam import key_bias_attention

    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    q, k, v = (
        torch.randn(1, heads, tokens, width, generator=g, requires_grad=True) for _ in range(3)
    )
    scores = torch.rand(1, tokens, generator=g)
    lam = torch.tensor(1.0, requires_grad=True)

    def attention():
        bias = torch.log1p(lam * scores)
        if variant == "plain":
            return F.scaled_dot_product_attention(q, k, v)
        if variant == "key-channel":
            return key_bias_attention(q, k, v, bias)
        if variant == "float-mask":
            return F.scaled_dot_product_attention(q, k, v, attn_mask=bias[:, None, None, :])
        w = bias.exp()[:, None, :, None].expand(1, heads, tokens, 1)
        if variant == "value-weights-unpadded":
            out = F.scaled_dot_product_attention(q, k, torch.cat([v * w, w], -1))
        else:
            pad = -(-(width + 1) // 8) * 8 - width
            zeros = q.new_zeros(1, heads, tokens, pad)
            out = F.scaled_dot_product_attention(
                torch.cat([q, zeros], -1), torch.cat([k, zeros], -1),
                torch.cat([v * w, w, zeros[..., 1:]], -1), scale=width**-0.5,
            )  # fmt: skip
        return out[..., :width] / out[..., width : width + 1]

    def step() -> None:
        attention().square().sum().backward()

    step()
    began = time.process_time()
    for _ in range(3):
        step()
    seconds = (time.process_time() - began) / 3
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB → GiB
    return {"cpu_s": seconds, "peak_gib": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--width", type=int, default=40)
    parser.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.tokens, args.heads, args.width)))
        return
    print(f"TAAM self-attention, {args.tokens} tokens, {args.heads} heads × {args.width}, "
          "batch 1, forward + backward, 1 thread")  # fmt: skip
    print("| variant | CPU s | peak RSS (GiB) |")
    print("|---|---:|---:|")
    for variant in VARIANTS:
        cmd = [sys.executable, __file__, "--worker", variant, "--tokens", str(args.tokens),
               "--heads", str(args.heads), "--width", str(args.width)]  # fmt: skip
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        result = json.loads(out.strip().splitlines()[-1])
        print(f"| {variant} | {result['cpu_s']:.2f} | {result['peak_gib']:.2f} |")


if __name__ == "__main__":
    main()
