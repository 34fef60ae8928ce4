#!/usr/bin/env bash
# The moert command line end to end: exit codes (0 ok, 2 usage, 1 other), one-line
# errors on stderr starting with "moert:", help for every subcommand, and the JSON of
# the benchmark.
set -u
moert="$1"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# shellcheck source=tests/cli_expect.sh
source "$(dirname "$0")/cli_expect.sh"

expect 0 "$moert" --version
grep -Eq '^moert [0-9]+\.[0-9]+\.[0-9]+$' "$tmp/out" || fail "--version prints '$(cat "$tmp/out")'"
expect 0 "$moert" --help
cp "$tmp/out" "$tmp/help"
grep -q 'usage: moert COMMAND' "$tmp/help" || fail "--help has no usage line"
for cmd in demo info bench; do
  grep -q "^  $cmd " "$tmp/help" || fail "--help does not list $cmd"
  expect 0 "$moert" "$cmd" --help
  grep -q "usage: moert $cmd" "$tmp/out" || fail "$cmd --help has no usage line"
done
expect 0 "$moert" bench softmax-topk --help
grep -q -- '--experts' "$tmp/out" || fail "bench softmax-topk --help lists no options"

"$moert" >/dev/null 2>&1; [ $? -eq 2 ] || fail "moert without a command should exit 2"
expect_error 2 "$moert" frobnicate
grep -q "unknown command 'frobnicate'" "$tmp/err" || fail "unknown command not named"
expect_error 2 "$moert" --frobnicate
expect_error 2 "$moert" info --bogus
expect_error 2 "$moert" info extra
expect_error 2 "$moert" demo --bogus
expect_error 2 "$moert" bench
expect_error 2 "$moert" bench nosuch
expect_error 2 "$moert" bench softmax-topk --k 0
expect_error 2 "$moert" bench softmax-topk --experts 0
expect_error 2 "$moert" bench softmax-topk --experts 70000
expect_error 2 "$moert" bench softmax-topk --experts 8 --k 9
grep -q 'k=9 exceeds --experts 8' "$tmp/err" || fail "k > E not explained: $(cat "$tmp/err")"
expect_error 2 "$moert" bench softmax-topk --tokens abc
expect_error 2 "$moert" bench softmax-topk --tokens -5
expect_error 2 "$moert" bench softmax-topk --isa sse9
expect_error 2 "$moert" bench softmax-topk --mode sideways
expect_error 2 "$moert" bench softmax-topk --threads
expect_error 2 "$moert" bench noise --tokens 0
expect_error 2 "$moert" bench noise --seed
# The noise's quality figures: chi-squares near their degrees of freedom, N(0, 1)'s moments.
expect 0 "$moert" bench noise --tokens 20000 --scan-tokens 300 --json
tail -n 1 "$tmp/out" | python3 -c '
import json, sys
r = json.load(sys.stdin)
assert abs(r["chi_square_uniform"] - 1023) < 6 * 45 and abs(r["chi_square_pairs"] - 1023) < 6 * 45, r
assert abs(r["mean"]) < 0.01 and abs(r["variance"] - 1) < 0.01 and abs(r["kurtosis"] - 3) < 0.05, r
assert r["distance_scan_worst_z"] < 6, r
' || fail "bench noise: $(tail -n 1 "$tmp/out")"

expect 0 "$moert" info
for key in 'variant chosen:' 'isa flags:' 'logical cpus:' 'openmp threads:'; do
  grep -q "$key" "$tmp/out" || fail "info lacks '$key'"
done
grep -Eq '^numa (nodes|: )' "$tmp/out" || fail "info says nothing of NUMA"
MOERT_ISA=scalar expect 0 "$moert" info
grep -q 'variant chosen: scalar (forced by MOERT_ISA)' "$tmp/out" || fail "MOERT_ISA=scalar not honoured"
MOERT_ISA=bogus expect_error 1 "$moert" info
grep -q "MOERT_ISA: ISA 'bogus' is not one of scalar, avx2, avx512" "$tmp/err" || fail "bad MOERT_ISA: $(cat "$tmp/err")"
if ! grep -q avx512f=yes <("$moert" info); then
  MOERT_ISA=avx512 expect_error 1 "$moert" info
  expect_error 1 "$moert" bench softmax-topk --isa avx512 --tokens 64
fi

expect 0 "$moert" demo
for key in 'softmax kernel' 'max/mean' 'entropy' 'z-loss' 'top-8 softmax, dropless' 'capacity factor 1' \
           '8 groups keep 4' 'expert choice' 'relu, threshold'; do
  grep -q "$key" "$tmp/out" || fail "demo lacks '$key'"
done

for isa in scalar $(grep -q avx2=yes <("$moert" info) && echo avx2); do
  expect 0 "$moert" bench softmax-topk --tokens 2048 --experts 64 --k 8 --rounds 1 --threads 2 --scaling --isa "$isa" --json
  json=$(tail -n 1 "$tmp/out")
  for key in variant tokens experts k threads ns_per_token tokens_per_s naive_ns_per_token \
             floor_ns_per_token speedup_vs_naive ratio_to_floor speedup_vs_1_thread; do
    echo "$json" | grep -q "\"$key\":" || fail "bench --json lacks $key: $json"
  done
  echo "$json" | grep -q "\"variant\":\"$isa\"" || fail "bench --isa $isa reports $json"
  echo "$json" | grep -q '"threads":2' || fail "bench threads not reported: $json"
done

# The set-up script, as a user who is not root and misses a package: it names the exact
# apt-get line and stops, changing nothing.
setup="$(dirname "$0")/../scripts/install-deps.sh"
if [ "$(id -u)" -eq 0 ] && command -v setpriv >/dev/null && command -v dpkg-query >/dev/null; then
  # A copy the unprivileged user can read (the checkout may sit in a private directory).
  public=$(mktemp -d)
  chmod 755 "$public"
  cp "$setup" "$public/install-deps.sh"
  chmod 644 "$public/install-deps.sh"
  MOERT_DEPS_EXTRA=moert-no-such-package setpriv --reuid=65534 --regid=65534 --clear-groups \
    bash "$public/install-deps.sh" >"$tmp/out" 2>"$tmp/err"
  status=$?
  rm -rf "$public"
  [ "$status" -eq 1 ] || fail "install-deps.sh as non-root with a missing package exited $status"
  grep -q 'run as root: apt-get update && apt-get install -y moert-no-such-package$' "$tmp/err" \
    || fail "install-deps.sh does not print the apt-get line: $(cat "$tmp/err")"
fi
bash "$setup" >/dev/null 2>&1 || fail "install-deps.sh fails with everything installed"

if [ "$failures" -ne 0 ]; then
  echo "$failures CLI check(s) failed"
  exit 1
fi
echo "CLI checks passed"
