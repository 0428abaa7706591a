"""Reading a teacher cache in training order: time per shuffled batch, by block size.

A batch of shuffled rows touches about one block per row, and a block is decoded whole
(zstd needs that), so the block size sets the work per batch. This writes one shard of
`--rows` rows (synthetic ids and 8-bit log-probabilities: decoding time does not depend on
the values) at each block size, with and without zstd, and times `--batches` random batches
of 16 rows through the reader, side by side in one run.

    python benchmarks/lm_cache_read.py [--rows 4096] [--length 128]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from distill.llm.cache_store import Layout, ShardReader, write_shard


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--length", type=int, default=128)
    ap.add_argument("--batches", type=int, default=50)
    a = ap.parse_args()
    k, vocab, rng = 32, 32000, np.random.default_rng(0)
    print(f"{a.rows} rows x {a.length} tokens, k={k}, vocabulary {vocab}, 8-bit log-probs")
    for block in (64, 8):
        for zstd in (0, 3):
            layout = Layout("topk", k, vocab, a.length, 8, zstd, block)
            folder = Path(tempfile.mkdtemp(prefix="distill-cache-read-"))

            def blocks(block=block):
                for start in range(0, a.rows, block):
                    n = min(block, a.rows - start)
                    ids = np.sort(rng.integers(0, vocab, (n, a.length, k)), -1)
                    logp = np.full((n, a.length, k), np.log(0.9 / k), np.float32)
                    yield ids, logp, np.full((n, a.length), np.log(0.1), np.float32)

            write_shard(folder, 0, 0, blocks(), layout)
            reader = ShardReader(folder, layout, 1)
            start = time.perf_counter()
            for _ in range(a.batches):
                reader.rows(torch.randperm(a.rows)[:16].numpy())
            ms = (time.perf_counter() - start) / a.batches * 1000
            print(f"block_rows {block:3d}  zstd {zstd}: {ms:6.1f} ms per shuffled batch of 16 rows")


if __name__ == "__main__":
    main()
