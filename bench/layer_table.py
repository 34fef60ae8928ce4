#!/usr/bin/env python3
"""Runs the layer issue's measurements side by side and prints the markdown tables of
bench/README.md: dispatch and combine against memcpy and PyTorch (T 4096, d 4096, E 64,
k 2, f32 and bf16, 2 threads), and the MoE layer of a DeepSeek-like and a Mixtral-like
shape (T 2048): stage times, the expert stage against the GEMM library alone, the share
outside the expert GEMMs, and tokens/s against an eager PyTorch layer. Each PyTorch figure
is measured right after moert's, run by run, and the ratios are taken within a run.

    python3 bench/layer_table.py [--moert build/bin/moert] [--python /usr/bin/python3] [--runs 3]

PyTorch (Debian: python3-torch) is optional: without it those columns say "-".
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def last_json(cmd):
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def torch_json(python, args):
    try:
        return last_json([python, os.path.join(HERE, "torch_moe.py")] + args + ["--json"])
    except (subprocess.CalledProcessError, FileNotFoundError, json.JSONDecodeError):
        return None


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(value, spec=".1f", suffix=""):
    return "-" if value is None else f"{value:{spec}}{suffix}"


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--moert", default="build/bin/moert")
    p.add_argument("--python", default=sys.executable)
    p.add_argument("--runs", type=int, default=3)
    a = p.parse_args()

    print("### Dispatch and combine (T 4096, d 4096, E 64, k 2, 2 threads)\n")
    print("| dtype | memcpy GB/s | dispatch GB/s | / memcpy | index_select GB/s | dispatch / index_select "
          "| combine GB/s | / memcpy | index_add_ GB/s | combine / index_add_ |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for dtype in ("f32", "bf16"):
        rows = []
        for _ in range(a.runs):
            m = last_json([a.moert, "bench", "dispatch", "--dtype", dtype, "--rounds", "5", "--json"])
            t = torch_json(a.python, ["dispatch", "--dtype", dtype, "--rounds", "5"])
            rows.append((m, t))
        g = lambda key: med([m[key] for m, _ in rows])
        sel = med([m["dispatch_gbs"] / t["index_select_gbs"] if t else None for m, t in rows])
        add = med([m["combine_gbs"] / t["index_add_gbs"] if t else None for m, t in rows])
        tsel = med([t["index_select_gbs"] if t else None for _, t in rows])
        tadd = med([t["index_add_gbs"] if t else None for _, t in rows])
        print(f"| {dtype} | {g('memcpy_gbs'):.1f} | {g('dispatch_gbs'):.1f} | {g('dispatch_ratio_to_memcpy'):.2f}x "
              f"| {fmt(tsel)} | {fmt(sel, '.1f', 'x')} | {g('combine_gbs'):.1f} | {g('combine_ratio_to_memcpy'):.2f}x "
              f"| {fmt(tadd)} | {fmt(add, '.1f', 'x')} |")

    print("\n### The MoE layer (T 2048, 2 threads, 1 worker)\n")
    print("| model | dtype | gate ms | route ms | dispatch ms | experts ms | combine ms | outside experts "
          "| expert GFLOP/s | / library alone | tokens/s | PyTorch eager tokens/s | vs PyTorch |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for model in ("deepseek", "mixtral"):
        for dtype in ("f32", "bf16"):
            rows = []
            for _ in range(a.runs):
                m = last_json([a.moert, "bench", "layer", "--model", model, "--dtype", dtype, "--rounds", "3", "--json"])
                t = torch_json(a.python, ["layer", "--model", model, "--dtype", dtype, "--rounds", "2"])
                rows.append((m, t))
            g = lambda key: med([m[key] for m, _ in rows])
            vs = med([m["tokens_per_s"] / t["tokens_per_s"] if t else None for m, t in rows])
            tt = med([t["tokens_per_s"] if t else None for _, t in rows])
            lib = "-" if dtype == "bf16" else f"{g('expert_ratio_to_library'):.2f}x"
            print(f"| {model} | {dtype} | {g('gate_ms'):.2f} | {g('route_ms'):.2f} | {g('dispatch_ms'):.2f} "
                  f"| {g('experts_ms'):.0f} | {g('combine_ms'):.2f} | {100 * g('outside_experts_share'):.1f}% "
                  f"| {g('expert_gflops'):.0f} | {lib} | {g('tokens_per_s'):.0f} | {fmt(tt, '.0f')} "
                  f"| {fmt(vs, '.2f', 'x')} |")


if __name__ == "__main__":
    main()
