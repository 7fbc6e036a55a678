#!/usr/bin/env bash
# Instructions the gate executes per proxied request, counted by valgrind's
# callgrind: unlike CPU time on this shared machine, the count barely moves
# from run to run, so it shows a change of a few percent on the hot path.
#
#   benches/load/instructions.sh [GATE_BINARY...]   (default: an unstripped release build of the checkout)
#
# Each binary runs under callgrind with one serving thread; wrk (1 thread,
# 4 connections) warms it up, the counters are zeroed, then 4 s of load with
# a session cookie and 4 s with a bearer JWT are counted, each divided by the
# requests wrk completed. With BENCH_TOP=N (default 25) the N functions with
# the most instructions (inclusive) are printed too, when the binary has
# symbols. BENCH_KEEP=1 keeps the dumps (callgrind-N.cookie, callgrind-N.bearer
# in the work directory) for callgrind_annotate. Needs valgrind (installed
# when missing).
set -euo pipefail
source "$(dirname "$0")/lib.sh"

setup_work
ensure_packages curl valgrind
if (($# == 0)); then
  build_profile_gate
  set -- "$GATE_BIN"
fi
gate_binaries "$@"
set -- "${BINS[@]}"
start_for_gates "$#"
BENCH_GATE_ENV="CT_WORKER_THREADS=1 ${BENCH_GATE_ENV:-}"

i=0
for bin in "$@"; do
  port=${PORTS[$i]}
  out="$WORK/callgrind-$i"
  # The gate runs under callgrind: a wrapper, as start_gate runs GATE_BIN.
  printf '#!/bin/sh\nexec valgrind --tool=callgrind --callgrind-out-file=%s.%%p "%s"\n' "$out" "$bin" >"$WORK/vg-$i"
  chmod +x "$WORK/vg-$i"
  GATE_BIN="$WORK/vg-$i"
  start_gate "$port" "$UP_PORT" warn "$WORK/gate-$i.log"
  cookie=$(signin_session "http://127.0.0.1:$port/hello")
  bearer=$(signin_token "$port")
  # valgrind's pid is the gate's (exec); callgrind_control finds it by pid.
  for mode in cookie bearer; do
    if [[ $mode == cookie ]]; then set_env=(BENCH_COOKIE="$cookie"); else set_env=(BENCH_BEARER="$bearer"); fi
    env "${set_env[@]}" wrk -t1 -c4 -d2s -s "$BENCH_DIR/wrk.lua" "http://127.0.0.1:$port/hello" >/dev/null 2>&1
    callgrind_control -z "$GATE_PID" >/dev/null
    env "${set_env[@]}" wrk -t1 -c4 -d4s -s "$BENCH_DIR/wrk.lua" "http://127.0.0.1:$port/hello" >"$WORK/wrk.txt" 2>&1
    before=$(find "$WORK" -name "callgrind-$i.*.*" | wc -l)
    callgrind_control -d "$mode" "$GATE_PID" >/dev/null
    dump=""
    for _ in $(seq 50); do
      if (($(find "$WORK" -name "callgrind-$i.*.*" | wc -l) > before)); then
        dump=$(ls -t "$out".*.* | head -1)
        break
      fi
      sleep 0.1
    done
    [[ -n $dump ]] || die "callgrind wrote no dump for $bin"
    mv "$dump" "$out.$mode"
    dump="$out.$mode"
    sleep 0.5
    requests=$(awk '/requests in/ {print $1}' "$WORK/wrk.txt")
    errors=$(grep -c 'Non-2xx\|Socket errors' "$WORK/wrk.txt" || true)
    ((errors == 0)) || { cat "$WORK/wrk.txt" >&2; die "$bin $mode: errors under load"; }
    total=$(awk '/^summary:/ {print $2}' "$dump")
    awk -v bin="$bin" -v mode="$mode" -v t="$total" -v n="$requests" \
      'BEGIN { printf "%s %-6s %7.0f instructions per request (%d requests)\n", bin, mode, t / n, n }'
    if ((${BENCH_TOP:-25} > 0)); then
      callgrind_annotate --inclusive=yes "$dump" 2>/dev/null | grep -E '^ *[0-9,]+ \(' | sed -n '2,$p' |
        grep -v 'tokio::runtime\|ssogate::main\|std::rt::\|libc_start\|(below main)\|???:' |
        sed -E 's/ \( *[0-9.]+%\)//; s/ \[[^]]*\]$//; s#/root/.cargo/registry/src/[^/]+/##; s#/rustc/[0-9a-f]+/library/##' |
        awk -v n="$requests" '{c=$1; gsub(",", "", c); $1=""; printf "  %7.0f %s\n", c / n, $0}' |
        awk '!seen[$NF]++' | head -"${BENCH_TOP:-25}" || true
    fi
  done
  kill -TERM "$GATE_PID" 2>/dev/null || true
  i=$((i + 1))
done
