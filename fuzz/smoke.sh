#!/usr/bin/env bash
# Short fuzz run of every target, as CI does it: builds the targets once
# (libFuzzer coverage, no sanitizer, dev profile: the fastest build on stable
# Rust), then runs each one over its seeds (fuzz/seeds/<target>/, committed)
# and what earlier runs kept (fuzz/corpus/<target>/, ignored) for SECS seconds.
# Every target runs even when one fails; the exit status is 1 if any crashed.
#
# Usage: fuzz/smoke.sh [SECS] [TARGET...]     (default: 20 s, every target)
set -euo pipefail
cd "$(dirname "$0")/.."

secs="${1:-20}"
shift || true
if [ "$#" -gt 0 ]; then
  targets=("$@")
else
  targets=(cookie_codec return_to path h1_answer config framing fast_path ws_frames h2_request)
fi
# Extra cargo-fuzz build flags, e.g. FUZZ_FLAGS="-O" for an optimised build.
read -r -a flags <<<"${FUZZ_FLAGS:---dev}"

cargo fuzz build -s none "${flags[@]}"

failed=()
for t in "${targets[@]}"; do
  mkdir -p "fuzz/corpus/$t"
  log="$(mktemp)"
  printf -- '--- %s: %ss\n' "$t" "$secs"
  if cargo fuzz run -s none "${flags[@]}" "$t" "fuzz/corpus/$t" "fuzz/seeds/$t" -- \
    -max_total_time="$secs" -verbosity=0 -print_final_stats=1 >"$log" 2>&1; then
    grep -E '^(INFO: seed corpus|stat::(number_of_executed_units|average_exec_per_sec|new_units_added))' "$log" || tail -n 5 "$log"
  else
    failed+=("$t")
    # The panic message, its location and the input that caused it.
    grep -v -E '^ +([0-9]+: |at )' "$log" | tail -n 60
  fi
  rm -f "$log"
done

printf 'fuzz: %s passed, %s failed\n' "$((${#targets[@]} - ${#failed[@]}))" "${#failed[@]}"
if [ "${#failed[@]}" -gt 0 ]; then
  printf 'crashed: %s (inputs under fuzz/artifacts/; see fuzz/README.md)\n' "${failed[*]}"
  exit 1
fi
