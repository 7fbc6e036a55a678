#!/usr/bin/env bash
# Heap allocations per request of the gate under load: malloc and realloc
# calls (uprobes on libc, counted by `perf stat`) over the requests served
# in the same seconds (two writev calls a request: one to the upstream, one
# to the client). Unlike requests/s on this shared machine, the count does
# not drift from run to run, so it shows a change of a few allocations.
#
#   benches/load/allocs.sh [GATE_BINARY...]   (default: a release build of the checkout)
#
# Each binary is measured with a session cookie and with a bearer JWT, wrk
# with 64 connections. Needs root (uprobes) and perf (linux-perf, installed
# when missing).
set -euo pipefail
source "$(dirname "$0")/lib.sh"

setup_work
ensure_packages curl
command -v perf >/dev/null || ensure_packages linux-perf
if (($# == 0)); then
  build_gate
  set -- "$GATE_BIN"
fi
gate_binaries "$@"
set -- "${BINS[@]}"
LIBC=$(ldd "$1" | awk '/libc\.so/ {print $3}')
[[ -n $LIBC ]] || die "cannot find the libc $1 uses"
for f in malloc realloc; do
  perf probe -q -d "probe_libc:$f" 2>/dev/null || true
  perf probe -q -x "$LIBC" "$f" || die "perf probe on $LIBC $f failed (root and uprobes are needed)"
done

start_for_gates "$#"

i=0
for bin in "$@"; do
  port=${PORTS[$i]}
  GATE_BIN=$bin
  start_gate "$port" "$UP_PORT" warn "$WORK/gate-$i.log"
  cookie=$(signin_session "http://127.0.0.1:$port/hello")
  bearer=$(signin_token "$port")
  for mode in cookie bearer; do
    if [[ $mode == cookie ]]; then set_env=(BENCH_COOKIE="$cookie"); else set_env=(BENCH_BEARER="$bearer"); fi
    env "${set_env[@]}" wrk -t2 -c64 -d7s -s "$BENCH_DIR/wrk.lua" "http://127.0.0.1:$port/hello" >"$WORK/wrk.txt" 2>&1 &
    wrk_pid=$!
    sleep 2
    perf stat -x, -e probe_libc:malloc,probe_libc:realloc,syscalls:sys_enter_writev \
      -p "$GATE_PID" -- sleep 3 2>"$WORK/stat.txt" >/dev/null || die "perf stat failed"
    wait "$wrk_pid" || true
    awk -F, -v bin="$bin" -v mode="$mode" '{v[$3] = $1}
      END {r = v["syscalls:sys_enter_writev"] / 2;
           if (r < 1) { print bin, mode ": no requests counted"; exit 1 }
           printf "%s %-6s %5.1f malloc + %4.1f realloc per request (%d requests)\n",
             bin, mode, v["probe_libc:malloc"] / r, v["probe_libc:realloc"] / r, r}' "$WORK/stat.txt"
  done
  i=$((i + 1))
done
for f in malloc realloc; do perf probe -q -d "probe_libc:$f" 2>/dev/null || true; done
