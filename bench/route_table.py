#!/usr/bin/env python3
"""Runs `moert bench route` on the routing issue's four figures (plus the plain sigmoid
route at E = 256, for the group-limited one) several times, and prints the markdown table
of bench/README.md: the median ratio to the fused kernel alone and its range over runs,
and the ratio of the same kernel with statistics (probability sums and logsumexp, which
every policy's auxiliary loss and z-loss need) to the kernel alone.

    python3 bench/route_table.py [--moert build/bin/moert] [--runs 5] [--rounds 7] [--gates]

With --gates, the gates issue's figures instead: each gate's route against token choice
with k = 8 at T = 16384, E = 64, 1 thread, run by run.
"""
import argparse
import json
import statistics
import subprocess

TC = "token choice (64,8), softmax post"
SIGMOID = "sigmoid top-8, E = 256"
# (label, arguments of `moert bench route`, the bound on the ratio or None, and the
# case the bullet names as its reference). The issue says each figure is a ratio to
# the fused kernel alone, but three of its bullets name another case ("at most 4x token
# choice (64,8)"): the table gives the ratio of the routes too, in the same run.
CASES = [
    (TC, ["--k", "8"], 1.6, None),
    (SIGMOID, ["--score", "sigmoid", "--experts", "256", "--k", "8"], None, None),
    ("sigmoid top-8, E = 256, G = 8, M = 4",
     ["--score", "sigmoid", "--experts", "256", "--k", "8", "--groups", "8", "--topk-groups", "4"], 1.5, SIGMOID),
    ("expert choice, E = 64, cf = 2", ["--policy", "expert-choice", "--capacity-factor", "2"], 4.0, TC),
    ("ReLU, E = 64, 10% active", ["--policy", "relu"], 1.5, TC),
]


# (label, arguments, the gates issue's bound on the ratio to token choice k = 8, or None).
GATE_CASES = [
    ("BatchTopK, k = 8", ["--policy", "batch-topk", "--k", "8"], 2.0),
    ("sparsemax", ["--policy", "sparsemax"], 3.0),
    ("noisy top-8 (normal:1)", ["--k", "8", "--noise", "normal:1"], 1.5),
    ("Gumbel top-8 (gumbel:1)", ["--k", "8", "--noise", "gumbel:1"], None),
    ("softpick top-8", ["--k", "8", "--score", "softpick"], 1.3),
    ("sqrt-softplus top-8", ["--k", "8", "--score", "sqrt-softplus"], None),
    ("softpick, rectified (relu policy)", ["--policy", "relu", "--score", "softpick"], None),
]


def gates(args):
    cases = [(TC, ["--k", "8"], None)] + GATE_CASES
    results = {label: [] for label, _, _ in cases}
    for _ in range(args.runs):
        for label, case_args, _ in cases:
            results[label].append(run(args.moert, case_args, args.rounds))
    print("| gate | route ns/token | experts/token | / token choice k = 8 (median) | range | bound |")
    print("|---|---|---|---|---|---|")
    for label, _, bound in cases:
        rs = results[label]
        per_run = [r["route_ns_per_token"] / n["route_ns_per_token"] for r, n in zip(rs, results[TC])]
        route = statistics.median(r["route_ns_per_token"] for r in rs)
        print(f"| {label} | {route:.1f} | {rs[0]['experts_per_token']:.2f} | {statistics.median(per_run):.2f}x "
              f"| {min(per_run):.2f}-{max(per_run):.2f}x | {f'{bound:.1f}x' if bound else '-'} |")


def run(moert, args, rounds):
    cmd = [moert, "bench", "route", "--rounds", str(rounds), "--json"] + args
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--moert", default="build/bin/moert")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--gates", action="store_true", help="the gates issue's figures")
    args = parser.parse_args()
    if args.gates:
        gates(args)
        return

    results = {label: [] for label, _, _, _ in CASES}
    for _ in range(args.runs):  # the cases interleaved run by run: noise hits them alike
        for label, case_args, _, _ in CASES:
            results[label].append(run(args.moert, case_args, args.rounds))

    print("| case | route ns/token | kernel ns/token | ratio (median) | ratio range | bound "
          "| kernel with statistics / kernel | route / the named case's route (range) |")
    print("|---|---|---|---|---|---|---|---|")
    for label, _, bound, named in CASES:
        rs = results[label]
        ratios = [r["ratio_to_kernel"] for r in rs]
        route = statistics.median(r["route_ns_per_token"] for r in rs)
        kernel = statistics.median(r["kernel_ns_per_token"] for r in rs)
        with_stats = statistics.median(r["kernel_stats_ratio_to_kernel"] for r in rs)
        vs = "-"
        if named:  # run by run: this route over the named case's route of the same run
            per_run = [r["route_ns_per_token"] / n["route_ns_per_token"] for r, n in zip(rs, results[named])]
            vs = f"{statistics.median(per_run):.2f}x ({min(per_run):.2f}-{max(per_run):.2f}x)"
        print(f"| {label} | {route:.1f} | {kernel:.1f} | {statistics.median(ratios):.2f}x "
              f"| {min(ratios):.2f}-{max(ratios):.2f}x | {f'{bound:.1f}x' if bound else '-'} "
              f"| {with_stats:.2f}x | {vs} |")


if __name__ == "__main__":
    main()
