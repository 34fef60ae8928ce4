# shellcheck shell=bash disable=SC2154
# The command-line tests' helpers, sourced by test_cli.sh and test_layer_cli.sh: they
# need $tmp (a scratch directory) and count failures in $failures.
failures=0

fail() { echo "FAIL: $*"; failures=$((failures + 1)); }

# expect STATUS CMD...: runs CMD, checks its exit status, keeps stdout/stderr.
expect() {
  local want=$1; shift
  "$@" >"$tmp/out" 2>"$tmp/err"
  local got=$?
  [ "$got" -eq "$want" ] || fail "'$*' exited $got, expected $want; stderr: $(cat "$tmp/err")"
  if [ "$want" -ne 0 ]; then
    local lines
    lines=$(wc -l <"$tmp/err")
    [ "$lines" -ge 1 ] || fail "'$*' failed without a message"
    grep -q '^moert: ' "$tmp/err" || fail "'$*': error does not start with 'moert:': $(cat "$tmp/err")"
  fi
}
# expect_error STATUS CMD...: also insists on exactly one line on stderr.
expect_error() {
  expect "$@"
  [ "$(wc -l <"$tmp/err")" -eq 1 ] || fail "'${*:2}': error is not one line: $(cat "$tmp/err")"
}
