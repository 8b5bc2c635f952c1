#!/usr/bin/env bash
# fuzz.sh: runs every Go fuzz target in the module for FUZZTIME each (default
# 10s), so `make test` exercises the parsers beyond their seed corpora. A
# crash leaves its input under testdata/fuzz/ for `go test` to replay.
set -euo pipefail
cd "$(dirname "$0")/.."
FUZZTIME=${FUZZTIME:-10s}
grep -rl --include='*_test.go' -E '^func Fuzz[A-Za-z0-9_]+\(f \*testing\.F\)' . | sort | while read -r file; do
  pkg=./$(dirname "${file#./}")
  grep -oE '^func Fuzz[A-Za-z0-9_]+' "$file" | sed 's/^func //' | while read -r target; do
    echo "fuzz $pkg $target ($FUZZTIME)"
    go test -run='^$' -fuzz="^${target}\$" -fuzztime="$FUZZTIME" "$pkg" >/tmp/dmflow-fuzz.$$ 2>&1 || { cat /tmp/dmflow-fuzz.$$; rm -f /tmp/dmflow-fuzz.$$; exit 1; }
  done
done
rm -f /tmp/dmflow-fuzz.$$
