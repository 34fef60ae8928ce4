#!/usr/bin/env bash
# `moert simulate` end to end: the outputs of a small run, a trace replay, and each kind of
# bad input failing with a one-line error that names it.
set -u
moert="$1"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# shellcheck source=tests/cli_expect.sh
source "$(dirname "$0")/cli_expect.sh"

expect 0 "$moert" simulate --help
grep -q -- '--compare' "$tmp/out" || fail "simulate --help lists no --compare"

# A small synthetic run: a header and a row per step and strategy; summary.json parses.
expect 0 "$moert" simulate --out "$tmp/s" --ranks 4 --nodes 2 --experts 16 --k 2 --tokens 512 --sample 128 --steps 3 \
  --profile zipf:1 --compare none,capacity:1+balanced,aux-free:0.01+eplb:4 --seed 5
[ "$(wc -l < "$tmp/s/steps.csv")" -eq 10 ] || fail "steps.csv has $(wc -l < "$tmp/s/steps.csv") lines, want 10"
head -1 "$tmp/s/steps.csv" | grep -q '^strategy,layer,step,max_over_mean,cv,dropped,unrouted,inter_node_bytes' ||
  fail "steps.csv header: $(head -1 "$tmp/s/steps.csv")"
grep -q 'sampled: 128 tokens per rank' "$tmp/out" || fail "the output does not say the counts were sampled"
grep -q '"sampled":[[:space:]]*true' "$tmp/s/summary.json" || fail "summary.json does not say sampled"
grep -q '"name":[[:space:]]*"aux-free:0.01+eplb:4"' "$tmp/s/summary.json" || fail "summary.json lacks a strategy"
# The plots: drawn by gnuplot when it is there; without it, said so, the data written anyway.
for f in heatmap.dat ranks.csv plots.gp; do [ -s "$tmp/s/$f" ] || fail "no $f"; done
if command -v gnuplot >/dev/null 2>&1; then
  for f in imbalance.png heatmap.png ranks.png; do
    head -c 8 "$tmp/s/$f" | od -An -c | grep -q 'P   N   G' || fail "$f is not a PNG"
  done
fi
mkdir -p "$tmp/nognuplot"
for tool in sh cat; do ln -sf "$(command -v $tool)" "$tmp/nognuplot/$tool"; done
PATH="$tmp/nognuplot" expect 0 "$moert" simulate --out "$tmp/np" --ranks 2 --experts 8 --k 2 --steps 2 --tokens 64
grep -q 'gnuplot is not installed' "$tmp/err" || fail "without gnuplot: $(cat "$tmp/err")"
[ -s "$tmp/np/plots.gp" ] && [ -s "$tmp/np/steps.csv" ] || fail "without gnuplot the data were not written"

# --noise: the router's selection noise differs between ranks and steps.
expect 0 "$moert" simulate --out "$tmp/n" --ranks 4 --experts 16 --k 2 --tokens 64 --sample 64 --steps 4 \
  --noise normal:1000 --compare none --quiet
[ "$(awk -F, 'NR > 1 { print $5 }' "$tmp/n/steps.csv" | sort -u | wc -l)" -gt 1 ] || fail "--noise: every step the same"

# The same seed, the same numbers.
expect 0 "$moert" simulate --out "$tmp/s2" --ranks 4 --nodes 2 --experts 16 --k 2 --tokens 512 --sample 128 --steps 3 \
  --profile zipf:1 --compare none,capacity:1+balanced,aux-free:0.01+eplb:4 --seed 5
cmp -s "$tmp/s/steps.csv" "$tmp/s2/steps.csv" || fail "two runs with one seed differ"

# --replay summary.json: the same steps.csv, bit for bit, with another thread count.
expect 0 "$moert" simulate --out "$tmp/r1" --ranks 6 --nodes 3 --experts 12 --k 3 --steps 7 --profile hot:2:0.5 \
  --drift walk:0.1 --correlation 0.5 --compare none,capacity:1+eplb:6,aux-free:0.01+balanced --replan 3 --window 2 \
  --seed 99 --alpha-inter 3e-6 --quiet
expect 0 "$moert" simulate --replay "$tmp/r1/summary.json" --out "$tmp/r2" --quiet --threads 1
cmp -s "$tmp/r1/steps.csv" "$tmp/r2/steps.csv" || fail "--replay did not reproduce steps.csv"
# ... with routing options of moert route too.
expect 0 "$moert" simulate --out "$tmp/r5" --ranks 4 --experts 16 --k 4 --steps 3 --score sigmoid --renormalize \
  --scaling 2.5 --noise normal:0.5 --compare none,capacity:1.25:probs --quiet
expect 0 "$moert" simulate --replay "$tmp/r5/summary.json" --out "$tmp/r6" --quiet
cmp -s "$tmp/r5/steps.csv" "$tmp/r6/steps.csv" || fail "--replay with routing options did not reproduce steps.csv"
expect_error 2 "$moert" simulate --replay "$tmp/r1/summary.json" --out "$tmp/r3" --ranks 4
grep -q 'only --out, --threads and --quiet' "$tmp/err" || fail "--replay with --ranks: $(cat "$tmp/err")"
echo '{"strategies": []}' > "$tmp/not_summary.json"
expect_error 1 "$moert" simulate --replay "$tmp/not_summary.json" --out "$tmp/r4"

# A trace of 3 tokens (k 2) on 2 ranks: shares 3/6, 2/6, 1/6 of experts 0, 1, 2.
printf '0\t1\t0\t2\t\t0.5\t0.5\t0.5\t0.5\n1\t0\t\t0.5\t0.5\n' > "$tmp/t.txt"
expect 0 "$moert" simulate --out "$tmp/t" --trace "$tmp/t.txt" --k 2 --experts 3 --ranks 2 --compare contiguous
grep -q 'replayed 1 layer of 3 tokens' "$tmp/out" || fail "trace replay: $(cat "$tmp/out")"
grep -q '"expert_shares":[[:space:]]*\[\[0.5, 0.3333333333333333[0-9]*, 0.1666666666666666[0-9]*\]\]' "$tmp/t/summary.json" ||
    fail "trace replay shares: $(grep expert_shares "$tmp/t/summary.json")"

# Capacity on recorded choices, by hand: 3 tokens, k 2, capacity ceil(3 x 2 / 3 x 0.5) = 1.
# position: expert 0 keeps token 0, expert 1 token 0, expert 2 token 1: 3 dropped, token 2
# left with none; probs: expert 0 keeps token 0 (0.9), expert 1 token 2 (0.3), expert 2
# token 1: 3 dropped, every token keeps one.
printf '0\t1\t0\t2\t0\t1\t\t0.9\t0.1\t0.2\t0.8\t0.7\t0.3\n' > "$tmp/cap.txt"
for case in "position 3 1" "probs 3 0"; do
  read -r policy dropped unrouted <<<"$case"
  expect 0 "$moert" simulate --out "$tmp/cap" --trace "$tmp/cap.txt" --k 2 --experts 3 --ranks 1 \
    --compare "capacity:0.5:$policy" --quiet
  got=$(awk -F, 'NR == 2 { print $6, $7 }' "$tmp/cap/steps.csv")
  [ "$got" = "$dropped $unrouted" ] || fail "capacity:0.5:$policy on the trace: dropped, unrouted = $got, want $dropped $unrouted"
done

# Bad input: each a usage error (2) or a data error (1), naming the problem.
bad() { # status, the error's words, then the arguments
  local want=$1 words=$2
  shift 2
  expect_error "$want" "$moert" simulate --out "$tmp/bad" "$@"
  grep -q -- "$words" "$tmp/err" || fail "simulate $*: error does not say '$words': $(cat "$tmp/err")"
}
bad 2 'do not divide into --nodes 4' --ranks 6 --nodes 4
bad 2 'more than the slots' --ranks 2 --experts 4 --k 2 --compare eplb:8
bad 2 'not a multiple of 2 ranks' --ranks 2 --experts 4 --k 2 --compare eplb:1
bad 2 'zipf:S needs an exponent' --profile zipf:x
bad 2 'is not uniform, zipf:S, hot:N:F' --profile pareto
bad 2 '--profile and --counts' --profile uniform --counts x.csv
bad 2 '--counts-select needs --counts' --counts-select domain=c4
bad 2 'is not none, capacity:F' --compare nothing
bad 2 'gives two placements' --compare balanced+eplb:2
bad 2 'the drop policy is probs or position' --compare capacity:1:latest
bad 2 'must divide the 16 experts' --ranks 4 --nodes 2 --experts 16 --k 2 --compare eplb:4:3
bad 2 'contiguous placement only' --ranks 4 --nodes 2 --experts 16 --k 2 --compare node-limited:1+balanced
bad 2 '--drift given twice' --drift rotate:2 --drift walk:0.5
bad 2 'an empty part' --compare none+
bad 2 'an empty strategy' --compare 'none,,capacity:1'
bad 2 'no spaces, quotes or control characters' --compare 'capacity: 1.5'
bad 2 'each rank' --route-groups 4
bad 2 'more than the slots (2 experts x 0 other ranks)' --ranks 2 --nodes 2 --experts 4 --k 2 --compare eplb:2:4
bad 2 'must divide the 16 experts' --ranks 4 --experts 16 --k 2 --compare eplb:4:3
[ ! -e "$tmp/bad/steps.csv" ] || fail "a refused strategy left steps.csv behind"
bad 2 'is not walk:SIGMA or rotate:N' --drift sideways
bad 2 '--seq-len goes with --correlation' --seq-len 8
bad 2 'topk_groups=3 is outside 1..groups=2' --ranks 4 --nodes 2 --experts 16 --k 2 --compare node-limited:3
bad 2 'noisy selection does not combine' --noise normal:1 --compare aux-free:0.01
bad 2 're-routes' --trace "$tmp/t.txt" --k 2 --experts 3 --compare aux-free:0.1
bad 2 'routing options do not apply' --trace "$tmp/t.txt" --k 2 --experts 3 --score sigmoid
bad 2 '--sample, --temperature and --seed do not apply' --trace "$tmp/t.txt" --k 2 --experts 3 --sample 2
bad 2 'does not apply to --policy relu' --policy relu --relu-threshold 0.1 --capacity-factor 2
printf '0\t5\t\t0.5\t0.5\n' > "$tmp/ids.txt"
bad 1 'expert id 5 is outside 0..3' --trace "$tmp/ids.txt" --k 2 --experts 4
printf '0\t1\t2\t\t0.5\t0.5\t0.5\n' > "$tmp/ragged.txt"
bad 1 'ragged' --trace "$tmp/ragged.txt" --k 2 --experts 4
printf 'expert,count\n0,10\n1\n' > "$tmp/bad.csv"
bad 1 'line 3: 1 fields, the header has 2' --counts "$tmp/bad.csv" --experts 2 --k 1
expect_error 2 "$moert" simulate --ranks 2
grep -q -- '--out DIR is required' "$tmp/err" || fail "simulate without --out: $(cat "$tmp/err")"
[ "$failures" -eq 0 ] && echo "all simulate CLI checks passed"
exit $((failures > 0))
