#!/usr/bin/env bash
# `moert layer` end to end: --check on every policy and dtype, --save and a rerun from the
# saved files (the same output, byte for byte), --json, and each bad input with its
# one-line error and exit status.
set -u
moert="$1"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# shellcheck source=tests/cli_expect.sh
source "$(dirname "$0")/cli_expect.sh"
# expect_word WORD: the last error names WORD.
expect_word() { grep -q -- "$1" "$tmp/err" || fail "error does not name '$1': $(cat "$tmp/err")"; }

small=(--tokens 96 --d-model 32 --d-ff 40 --experts 6 --iters 1)

expect 0 "$moert" layer --help
grep -q -- '--weights-prefix' "$tmp/out" || fail "layer --help lists no --weights-prefix"

# --check against the double reference, for each policy and dtype.
for opts in "--k 2" "--k 2 --capacity-factor 1 --drop position" "--k 3 --score sigmoid --renormalize" \
            "--policy expert-choice --capacity-factor 2" "--policy relu" "--k 2 --dtype bf16" \
            "--k 2 --expert synthetic --synthetic-cost 8" "--k 2 --workers 2 --threads 2" \
            "--policy batch-topk --k 2" "--policy batch-topk --k 2 --batch-score logits" "--policy batch-topk --k 2 --renormalize" \
            "--policy batch-topk --k 2 --threshold 0.1" "--policy sparsemax" "--policy sparsemax --k-max 2" \
            "--k 2 --noise normal:1 --seed 7" "--k 2 --noise gumbel:0.5 --noisy-weights" \
            "--k 2 --score softpick" "--k 2 --score sqrt-softplus --renormalize" "--policy relu --score softpick"; do
  # shellcheck disable=SC2086
  expect 0 "$moert" layer "${small[@]}" $opts --check
  grep -q 'check: max relative error .* (ok' "$tmp/out" || fail "layer $opts: no passing check line"
done

# --json: the stage times and statistics on the last line.
expect 0 "$moert" layer "${small[@]}" --k 2 --json
for key in tokens_per_s gate_ms route_ms dispatch_ms experts_ms combine_ms aux_loss max_over_mean; do
  tail -n 1 "$tmp/out" | grep -q "\"$key\":" || fail "layer --json has no $key"
done

# --save, then the same layer from the saved files: the same output, byte for byte.
expect 0 "$moert" layer "${small[@]}" --k 2 --seed 5 --save "$tmp/a"
for f in x.npy gate.npy w1.npy w3.npy w2.npy out.npy layer.safetensors token_offsets.npy expert_ids.npy \
         weights.npy expert_counts.npy stats.json; do
  [ -s "$tmp/a/$f" ] || fail "--save wrote no $f"
done
expect 0 "$moert" layer --k 2 --iters 1 --weights "$tmp/a/layer.safetensors" --input "$tmp/a/x.npy" \
  --save "$tmp/b" --check
cmp -s "$tmp/a/out.npy" "$tmp/b/out.npy" || fail "the rerun from saved files gave another output"
cmp -s "$tmp/a/expert_ids.npy" "$tmp/b/expert_ids.npy" || fail "the rerun from saved files routed otherwise"

# d comes from --input when no option or file gives it.
expect 0 "$moert" layer --k 2 --iters 1 --experts 6 --d-ff 40 --input "$tmp/a/x.npy" --check
grep -q 'd=32 ' "$tmp/out" || fail "--input did not set d_model: $(head -1 "$tmp/out")"

# A --save that fails half-way leaves no file that looks valid, and removes an earlier run's.
expect 0 "$moert" layer "${small[@]}" --k 2 --save "$tmp/c"
rm "$tmp/c/w2.npy" && mkdir "$tmp/c/w2.npy" # w2.npy cannot be renamed into place
expect_error 1 "$moert" layer "${small[@]}" --k 2 --save "$tmp/c"; expect_word w2.npy
for f in x.npy gate.npy out.npy w1.npy w3.npy layer.safetensors .w2.npy.partial expert_ids.npy stats.json; do
  [ -e "$tmp/c/$f" ] && fail "a failed --save left $f"
done

# Bad input: usage errors (2) and failures (1), each named.
expect_error 2 "$moert" layer "${small[@]}" --workers 0;          expect_word workers
expect_error 2 "$moert" layer "${small[@]}" --d-model 0;          expect_word d-model
expect_error 2 "$moert" layer "${small[@]}" --d-ff 0;             expect_word d-ff
expect_error 2 "$moert" layer "${small[@]}" --workers 3 --threads 2; expect_word 'exceeds --threads'
expect_error 2 "$moert" layer "${small[@]}" --dtype fp8;          expect_word fp8
expect_error 2 "$moert" layer "${small[@]}" --k 7;                expect_word k
expect_error 1 "$moert" layer "${small[@]}" --input "$tmp/missing.npy"; expect_word missing.npy
expect_error 1 "$moert" layer "${small[@]}" --weights "$tmp/missing.safetensors"; expect_word missing.safetensors
expect_error 2 "$moert" layer --tokens 96 --d-model 16 --iters 1 --input "$tmp/a/x.npy"; expect_word d_model
expect_error 2 "$moert" layer --experts 5 --iters 1 --k 2 --weights "$tmp/a/layer.safetensors"; expect_word contradict
expect_error 2 "$moert" layer "${small[@]}" --weights-prefix model.; expect_word 'needs --weights'
expect 0 "$moert" layer "${small[@]}" --k 2 --workers 2 --threads 2
grep -q 'rows per worker (node): [0-9]* ([0-9-]*) [0-9]* ([0-9-]*)$' "$tmp/out" || fail "no per-worker rows for 2 workers"
printf 'not a safetensors file' >"$tmp/bad.safetensors"
expect_error 1 "$moert" layer --iters 1 --weights "$tmp/bad.safetensors"; expect_word bad.safetensors
expect_error 1 "$moert" layer --iters 1 --k 2 --weights "$tmp/a/layer.safetensors" --weights-prefix model.; expect_word model.gate.weight

[ "$failures" -eq 0 ] && echo "all layer CLI checks passed"
exit $((failures > 0))
