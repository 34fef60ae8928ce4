#!/usr/bin/env bash
# `moert layer --ep P` under mpiexec: --check passes on every rank count and policy, the
# JSON has every stage per rank, a rank count that differs from --ep is a usage error.
set -u
moert="$1"
mpiexec="$2"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# shellcheck source=tests/cli_expect.sh
source "$(dirname "$0")/cli_expect.sh"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
small=(--tokens 77 --d-model 32 --d-ff 24 --experts 6 --iters 1 --threads 1 --check)

for ranks in 1 2 3 4; do
  for opts in "--k 2" "--k 2 --capacity-factor 1" "--policy expert-choice --capacity-factor 2" "--policy relu" \
              "--k 2 --dtype bf16" "--policy batch-topk --k 2" "--k 2 --noise normal:1"; do
    # shellcheck disable=SC2086
    expect 0 "$mpiexec" -n "$ranks" --oversubscribe "$moert" layer --ep "$ranks" "${small[@]}" $opts
    grep -q 'check: max relative error .* (ok' "$tmp/out" || fail "--ep $ranks $opts: no passing check"
  done
done

expect 0 "$mpiexec" -n 2 --oversubscribe "$moert" layer --ep 2 "${small[@]}" --k 2 --json
for key in gate_ms route_ms pack_ms counts_ms dispatch_ms experts_ms regroup_ms wait_ms return_ms combine_ms total_ms total_max_over_mean; do
  tail -n 1 "$tmp/out" | grep -q "\"$key\":" || fail "--ep --json has no $key"
done
grep -q '^  max ' "$tmp/out" || fail "--ep prints no max row"

"$mpiexec" -n 2 --oversubscribe "$moert" layer --ep 3 "${small[@]}" --k 2 >"$tmp/out" 2>"$tmp/err"
[ $? -ne 0 ] || fail "--ep 3 on 2 ranks succeeded"
grep -q 'moert: --ep 3: running on 2 MPI ranks' "$tmp/err" || fail "--ep 3 on 2 ranks: $(head -3 "$tmp/err")"
# --save under --ep writes, from rank 0, the same files as the single-process run with
# --route-groups P: byte for byte, statistics included.
for ranks in 2 3 4; do
  for opts in "--k 2 --capacity-factor 1 --pad" "--policy expert-choice --capacity-factor 2" "--k 2 --dtype bf16" \
              "--policy batch-topk --k 2" "--policy sparsemax --k-max 3" "--k 2 --noise gumbel:1 --seed 5"; do
    rm -rf "$tmp/ep" "$tmp/single"
    # shellcheck disable=SC2086
    expect 0 "$mpiexec" -n "$ranks" --oversubscribe "$moert" layer --ep "$ranks" "${small[@]}" $opts --save "$tmp/ep"
    # shellcheck disable=SC2086
    expect 0 "$moert" layer --route-groups "$ranks" "${small[@]}" $opts --save "$tmp/single"
    for f in "$tmp"/single/*; do
      cmp -s "$f" "$tmp/ep/$(basename "$f")" || fail "--ep $ranks $opts: $(basename "$f") differs from --route-groups $ranks"
    done
  done
done

[ "$failures" -eq 0 ] && echo "all --ep CLI checks passed"
exit $((failures > 0))
