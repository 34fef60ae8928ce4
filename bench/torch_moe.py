#!/usr/bin/env python3
"""PyTorch baselines for moert's layer benchmarks, on the same shapes.

    python3 bench/torch_moe.py dispatch [--tokens 4096] [--d-model 4096] [--experts 64] [--k 2]
                                        [--dtype f32|bf16] [--threads 2] [--rounds 5] [--json]
    python3 bench/torch_moe.py layer [--model deepseek|mixtral] [--tokens 2048] [--dtype f32|bf16]
                                     [--threads 2] [--rounds 3] [--json]

dispatch: index_select of each routed (token, expert) pair's row, in expert order (it
allocates, as it does in eager MoE code), and index_add_ of the weighted expert outputs
into the token rows; GB/s count bytes read plus written, as `moert bench dispatch` does.

layer: an eager MoE layer as written in PyTorch code: the gate matmul, softmax top-k,
then a loop over experts with index_select, three matmuls with SiLU, and index_add_.
Reports tokens/s (the median over rounds, after a warm-up pass).

Needs PyTorch (Debian: python3-torch).
"""
import argparse
import json
import statistics
import sys
import time

try:
    import torch
except ImportError:
    sys.exit("torch_moe.py: PyTorch is not installed (apt-get install python3-torch)")

MODELS = {"deepseek": (2048, 1408, 64, 6), "mixtral": (2048, 5632, 8, 2)}


def timed(fn, rounds):
    fn()  # warm up
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_dispatch(a):
    dtype = torch.bfloat16 if a.dtype == "bf16" else torch.float32
    elem = 2 if a.dtype == "bf16" else 4
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(a.tokens, a.d_model, generator=gen).to(dtype)
    logits = torch.randn(a.tokens, a.experts, generator=gen)
    weights, ids = torch.topk(torch.softmax(logits, dim=-1), a.k, dim=-1)
    order = torch.argsort(ids.reshape(-1), stable=True)
    tokens = order // a.k  # the token of each expert-ordered slot
    slot_weights = weights.reshape(-1)[order].to(dtype).unsqueeze(1)
    expert_out = torch.randn(tokens.numel(), a.d_model, generator=gen).to(dtype)
    out = torch.zeros(a.tokens, a.d_model, dtype=dtype)

    def dispatch():
        return x.index_select(0, tokens)

    def combine():
        out.zero_()
        out.index_add_(0, tokens, expert_out * slot_weights)

    slots = tokens.numel()
    t_dispatch = timed(dispatch, a.rounds)
    t_combine = timed(combine, a.rounds)
    dispatch_bytes = 2 * slots * a.d_model * elem
    combine_bytes = slots * a.d_model * 4 + a.tokens * a.d_model * elem  # as moert counts it
    return {"what": "dispatch", "dtype": a.dtype, "threads": a.threads,
            "index_select_gbs": dispatch_bytes / t_dispatch / 1e9,
            "index_add_gbs": combine_bytes / t_combine / 1e9}


def bench_layer(a):
    d, f, E, k = MODELS[a.model]
    dtype = torch.bfloat16 if a.dtype == "bf16" else torch.float32
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(a.tokens, d, generator=gen).to(dtype)
    gate = (torch.randn(d, E, generator=gen) / d ** 0.5).to(dtype)
    # Every expert gets the same weights, as in `moert bench layer`: speed does not depend on them.
    w1 = (torch.randn(d, f, generator=gen) / d ** 0.5).to(dtype)
    w3 = (torch.randn(d, f, generator=gen) / d ** 0.5).to(dtype)
    w2 = (torch.randn(f, d, generator=gen) / f ** 0.5).to(dtype)

    def layer():
        logits = (x @ gate).float()
        topv, topi = torch.topk(logits, k, dim=-1)
        weights = torch.softmax(topv, dim=-1).to(dtype)  # softmax post, moert's default
        out = torch.zeros_like(x)
        for e in range(E):
            tok, slot = torch.where(topi == e)
            if tok.numel() == 0:
                continue
            xe = x.index_select(0, tok)
            h = torch.nn.functional.silu(xe @ w1) * (xe @ w3)
            out.index_add_(0, tok, (h @ w2) * weights[tok, slot].unsqueeze(1))
        return out

    with torch.no_grad():
        t = timed(layer, a.rounds)
    return {"what": "layer", "model": a.model, "dtype": a.dtype, "tokens": a.tokens, "threads": a.threads,
            "tokens_per_s": a.tokens / t, "ms": t * 1e3}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["dispatch", "layer"])
    p.add_argument("--tokens", type=int)
    p.add_argument("--d-model", type=int, default=4096)
    p.add_argument("--experts", type=int, default=64)
    p.add_argument("--k", type=int, default=2)
    p.add_argument("--dtype", choices=["f32", "bf16"], default="f32")
    p.add_argument("--model", choices=sorted(MODELS), default="deepseek")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    if a.tokens is None:
        a.tokens = 4096 if a.what == "dispatch" else 2048
    r = bench_dispatch(a) if a.what == "dispatch" else bench_layer(a)
    if a.json:
        print(json.dumps(r))
    else:
        for key, value in r.items():
            print(f"{key}: {value:.2f}" if isinstance(value, float) else f"{key}: {value}")


if __name__ == "__main__":
    main()
