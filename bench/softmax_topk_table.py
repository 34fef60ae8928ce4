#!/usr/bin/env python3
"""Runs `moert bench softmax-topk` on the README's shapes and thread counts, and PyTorch's
topk(softmax(x)) when it is installed, and prints the markdown table of bench/README.md.

    python3 bench/softmax_topk_table.py [--moert build/bin/moert] [--tokens 16384]
                                        [--threads 1,2] [--rounds 5] [--no-torch]
"""
import argparse
import json
import os
import subprocess
import sys

SHAPES = [(8, 2), (64, 8), (128, 8), (160, 6), (256, 8), (128, 1)]


def moert_row(moert, tokens, experts, k, threads, rounds):
    cmd = [moert, "bench", "softmax-topk", "--tokens", str(tokens), "--experts", str(experts),
           "--k", str(k), "--threads", str(threads), "--rounds", str(rounds), "--json"]
    if threads > 1:
        cmd.append("--scaling")
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def torch_rows(tokens, threads, rounds):
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "torch_softmax_topk.py")
    shapes = ",".join(f"{e}:{k}" for e, k in SHAPES)
    run = subprocess.run([sys.executable, script, "--tokens", str(tokens), "--threads",
                          str(threads), "--rounds", str(rounds), "--shapes", shapes, "--json"],
                         capture_output=True, text=True)
    if run.returncode != 0:
        return None
    return {(r["experts"], r["k"]): r["ns_per_token"]
            for r in json.loads(run.stdout.strip().splitlines()[-1])}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--moert", default="build/bin/moert")
    parser.add_argument("--tokens", type=int, default=16384)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-torch", action="store_true")
    args = parser.parse_args()

    print("| (E,k) | threads | variant | fused ns/token | naive ns/token | speed-up vs naive "
          "| floor ns/token | fused / floor | PyTorch ns/token | vs PyTorch | vs 1 thread |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for threads in (int(t) for t in args.threads.split(",")):
        torch = None if args.no_torch else torch_rows(args.tokens, threads, args.rounds)
        for experts, k in SHAPES:
            r = moert_row(args.moert, args.tokens, experts, k, threads, args.rounds)
            t = torch.get((experts, k)) if torch else None
            scaling = f"{r['speedup_vs_1_thread']:.2f}x" if "speedup_vs_1_thread" in r else "-"
            torch_ns = f"{t:.0f}" if t else "-"
            vs_torch = f"{t / r['ns_per_token']:.0f}x" if t else "-"
            print(f"| ({experts},{k}) | {threads} | {r['variant']} | {r['ns_per_token']:.1f} "
                  f"| {r['naive_ns_per_token']:.0f} | {r['speedup_vs_naive']:.1f}x "
                  f"| {r['floor_ns_per_token']:.1f} | {r['ratio_to_floor']:.2f}x "
                  f"| {torch_ns} | {vs_torch} | {scaling} |", flush=True)


if __name__ == "__main__":
    main()
