#!/usr/bin/env python3
"""PyTorch's topk(softmax(x)) with renormalisation, timed on the shapes of
`moert bench softmax-topk`, for the side-by-side table in bench/README.md.

    python3 bench/torch_softmax_topk.py [--tokens 16384] [--threads 1] [--rounds 5]
                                        [--shapes 8:2,64:8,128:8,160:6,256:8,128:1] [--json]

Needs PyTorch (Debian: python3-torch). Logits are standard normal f32, the same
distribution moert's benchmark uses; each figure is the median over rounds.
"""
import argparse
import json
import statistics
import sys
import time

try:
    import torch
except ImportError:
    sys.exit("torch_softmax_topk.py: PyTorch is not installed (apt-get install python3-torch)")


def gate(x, k):
    probs = torch.softmax(x, dim=-1)
    weights, ids = torch.topk(probs, k, dim=-1)
    return ids, weights / weights.sum(dim=-1, keepdim=True)


def ns_per_token(x, k, rounds, min_seconds=0.05):
    gate(x, k)  # warm up
    samples = []
    for _ in range(rounds):
        calls, start = 0, time.perf_counter()
        while True:
            gate(x, k)
            calls += 1
            elapsed = time.perf_counter() - start
            if elapsed >= min_seconds:
                break
        samples.append(elapsed / calls * 1e9 / x.shape[0])
    return statistics.median(samples)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=16384)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--shapes", default="8:2,64:8,128:8,160:6,256:8,128:1")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(1)
    results = []
    for shape in args.shapes.split(","):
        experts, k = (int(v) for v in shape.split(":"))
        x = torch.randn(args.tokens, experts, generator=gen, dtype=torch.float32)
        ns = ns_per_token(x, k, args.rounds)
        results.append({"experts": experts, "k": k, "threads": args.threads,
                        "tokens": args.tokens, "ns_per_token": ns})
        print(f"torch {torch.__version__} topk(softmax(x)) + renorm: tokens={args.tokens} "
              f"experts={experts} k={k} threads={args.threads}: {ns:.1f} ns/token")
    if args.json:
        print(json.dumps(results))


if __name__ == "__main__":
    main()
