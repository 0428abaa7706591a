"""Bytes per cached token of `distill lm-cache` at k = 32, 64, 128 for 32k and 152k vocabularies.

Without zstd the sizes follow from the layout alone (Elias-Fano ids, 16- or 8-bit
log-probabilities, a 16-bit tail per position), so they are exact for any teacher. With
zstd they depend on the teacher's distributions; those here are synthetic, shaped like a
trained LM's: a Zipf unigram prior (frequent tokens have low ids, as in BPE vocabularies)
plus per-position noise, temperature-sharpened so the top token holds about half the mass.
Each cell encodes `--positions` positions for real and divides the bytes written.

    python benchmarks/lm_cache_bytes.py [--positions 2048]
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from distill.llm.cache import sparse_teacher
from distill.llm.cache_store import Layout


def teacher_logits(vocab: int, positions: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    prior = -1.1 * torch.log(torch.arange(1, vocab + 1, dtype=torch.float32))
    return (prior + 2.5 * torch.randn(positions, vocab, generator=gen)) * 1.6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--positions", type=int, default=2048)
    args = ap.parse_args()
    rows, out = [], []
    for vocab in (32000, 152064):
        logits = teacher_logits(vocab, args.positions)
        top1 = float(torch.softmax(logits, -1).max(-1).values.mean())
        for k in (32, 64, 128):
            ids, values, tail = (t.numpy() for t in sparse_teacher(logits, "topk", k))
            shape = (1, args.positions)
            ids, values, tail = (
                ids.reshape(*shape, k),
                values.reshape(*shape, k),
                tail.reshape(shape),
            )
            cells = {}
            for bits in (16, 8):
                for zstd in (0, 3):
                    layout = Layout("topk", k, vocab, args.positions, bits, zstd)
                    n = len(layout.encode(ids, values, tail))
                    cells[f"{bits}-bit{' zstd' if zstd else ''}"] = n / args.positions / k
            naive = (4 + 2) + 2 / k  # int32 id, float16 log-prob, float16 tail
            rows.append((vocab, k, naive, cells))
            out.append({"vocab": vocab, "k": k, "top1_mass": top1, "bytes_per_pair": cells})
    names = list(rows[0][3])
    print("bytes per stored (id, log-prob) pair, tail included")
    print(f"| vocab | k | int32 + fp16 | {' | '.join(names)} |")
    print("|---|---|---|" + "---|" * len(names))
    for vocab, k, naive, cells in rows:
        print(
            f"| {vocab:,} | {k} | {naive:.2f} | "
            + " | ".join(f"{cells[n]:.2f}" for n in names)
            + " |"
        )
    print(json.dumps(out))


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
