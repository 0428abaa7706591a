"""Peak memory and time of the chunked token-divergence path against the naive one.

Both compute forward KL (and its gradient) between a student and a teacher at a 32k
vocabulary from final hidden states and output heads; the naive path materialises the
(batch, length, vocab) logits of both models. Each measurement runs in a fresh process
(CPU: peak resident memory over the setup's; CUDA: torch.cuda.max_memory_allocated over
the setup's), paths alternating, and the ratio is taken within the run.

    python benchmarks/llm_chunked_memory.py [--device cuda] [--tokens 4096] [--vocab 32000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time


def measure(
    path: str, device: str, tokens: int, vocab: int, d_s: int, d_t: int, chunk: int
) -> dict:
    import resource

    import torch

    from distill.llm import chunked_token_divergence, token_kd_loss

    torch.manual_seed(0)
    dev = torch.device(device)
    h_s = torch.randn(tokens, d_s, device=dev, requires_grad=True)
    h_t = torch.randn(tokens, d_t, device=dev)
    w_s = (torch.randn(vocab, d_s, device=dev) * 0.02).requires_grad_(True)
    w_t = torch.randn(vocab, d_t, device=dev) * 0.02

    def run() -> float:
        if path == "naive":
            loss = token_kd_loss(h_s @ w_s.t(), h_t @ w_t.t(), divergence="forward_kl")
        else:
            loss = chunked_token_divergence(
                h_s, w_s, h_t, w_t, divergence="forward_kl", chunk_size=chunk
            )
        loss.backward()
        return float(loss)

    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    start = time.perf_counter()
    value = run()
    if dev.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    first = time.perf_counter() - start
    times = []
    for _ in range(3):  # warm timings
        h_s.grad = w_s.grad = None
        t0 = time.perf_counter()
        run()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return {
        "path": path,
        "peak_mib": peak / 2**20,
        "first_s": first,
        "seconds": sorted(times)[1],
        "loss": value,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--d-student", type=int, default=512)
    ap.add_argument("--d-teacher", type=int, default=1024)
    ap.add_argument("--chunk", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    a = ap.parse_args()
    args = (a.device, a.tokens, a.vocab, a.d_student, a.d_teacher, a.chunk)
    if a.worker:
        print(json.dumps(measure(a.worker, *args)))
        return
    rows = []
    for _ in range(a.repeats):
        for path in ("naive", "chunked"):
            cmd = [
                sys.executable,
                __file__,
                "--worker",
                path,
                "--device",
                a.device,
                "--tokens",
                str(a.tokens),
                "--vocab",
                str(a.vocab),
                "--d-student",
                str(a.d_student),
                "--d-teacher",
                str(a.d_teacher),
                "--chunk",
                str(a.chunk),
            ]
            rows.append(
                json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
            )
    summary = {}
    for path in ("naive", "chunked"):
        mine = [r for r in rows if r["path"] == path]
        summary[path] = {
            "peak_mib": min(r["peak_mib"] for r in mine),
            "seconds": min(r["seconds"] for r in mine),
            "loss": mine[0]["loss"],
        }
    n, c = summary["naive"], summary["chunked"]
    print(
        f"{a.tokens} tokens, vocab {a.vocab}, d {a.d_student}/{a.d_teacher}, chunk {a.chunk}, "
        f"{a.device}"
    )
    for path in ("naive", "chunked"):
        s = summary[path]
        print(
            f"  {path:8s} peak {s['peak_mib']:8.1f} MiB   {s['seconds'] * 1000:8.1f} ms   "
            f"loss {s['loss']:.6f}"
        )
    print(
        f"  memory ratio naive/chunked {n['peak_mib'] / max(c['peak_mib'], 1e-9):.1f}x, "
        f"time ratio chunked/naive {c['seconds'] / n['seconds']:.2f}x"
    )


if __name__ == "__main__":
    main()
