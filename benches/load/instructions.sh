#!/usr/bin/env bash
# Instructions the gate executes per proxied request or relayed WebSocket
# message, counted by valgrind's callgrind: unlike CPU time on this shared
# machine, the count barely moves from run to run, so it shows a change of a
# few percent on the hot path.
#
#   benches/load/instructions.sh [GATE_BINARY...]   (default: an unstripped release build of the checkout)
#
# Each binary runs under callgrind with one serving thread. For each mode the
# load is warmed up, the counters are zeroed, the load runs 4 s and the count
# is divided by what the load completed:
#   cookie, bearer  wrk (1 thread, 4 connections) with a session cookie / a
#                   bearer JWT, per request (upstream: nginx, tiny body);
#   ws64, ws16k     wstool load (4 connections, closed loop) with a session
#                   cookie, per echoed message of 64 B / 16 KiB: one frame up
#                   and one back (upstream: wstool echo; a gate of its own).
# BENCH_MODES picks modes (default "cookie bearer ws64 ws16k"); BENCH_LEVEL
# the gate's RUST_LOG (default warn; info counts the request lines). With
# BENCH_TOP=N (default 25) the N functions with the most instructions
# (inclusive) are printed too, when the binary has symbols. BENCH_KEEP=1
# keeps the dumps (callgrind-N.MODE in the work directory) for
# callgrind_annotate. Needs valgrind (installed when missing).
set -euo pipefail
source "$(dirname "$0")/lib.sh"

MODES=${BENCH_MODES:-cookie bearer ws64 ws16k}
HTTP_MODES="" WS_MODES=""
for m in $MODES; do
  case $m in
  cookie | bearer) HTTP_MODES+=" $m" ;;
  ws64 | ws16k) WS_MODES+=" $m" ;;
  *) die "BENCH_MODES: unknown mode $m (cookie, bearer, ws64, ws16k)" ;;
  esac
done

setup_work
ensure_packages curl valgrind
if (($# == 0)); then
  build_profile_gate
  set -- "$GATE_BIN"
fi
gate_binaries "$@"
set -- "${BINS[@]}"
N=$#
# Ports 0..N-1: gates in front of nginx; N..2N-1: gates in front of wstool echo.
start_for_gates $((2 * N))
if [[ -n $WS_MODES ]]; then
  build_wstool
  read -r ECHO_PORT < <(free_ports 1)
  start_wstool_echo "$ECHO_PORT"
fi
BENCH_GATE_ENV="CT_WORKER_THREADS=1 ${BENCH_GATE_ENV:-}"

# gate_under_callgrind BIN PORT UPSTREAM_PORT NAME: starts BIN under
# callgrind (dumps $WORK/callgrind-NAME.PID.*); sets GATE_PID (valgrind's
# pid is the gate's: exec, so callgrind_control finds it).
gate_under_callgrind() {
  printf '#!/bin/sh\nexec valgrind --tool=callgrind --callgrind-out-file=%s.%%p "%s"\n' "$WORK/callgrind-$4" "$1" >"$WORK/vg-$4"
  chmod +x "$WORK/vg-$4"
  GATE_BIN="$WORK/vg-$4" start_gate "$2" "$3" "${BENCH_LEVEL:-warn}" "$WORK/gate-$4.log"
}

# load MODE PORT SECS OUTFILE: one run of MODE's load against the gate on PORT.
load() {
  case $1 in
  cookie) BENCH_COOKIE="$COOKIE" wrk -t1 -c4 -d"$3"s -s "$BENCH_DIR/wrk.lua" "http://127.0.0.1:$2/hello" >"$4" 2>&1 ;;
  bearer) BENCH_BEARER="$BEARER" wrk -t1 -c4 -d"$3"s -s "$BENCH_DIR/wrk.lua" "http://127.0.0.1:$2/hello" >"$4" 2>&1 ;;
  ws64 | ws16k)
    local size=64
    [[ $1 == ws16k ]] && size=16384
    WSTOOL_THREADS=1 "$WSTOOL" load "ws://127.0.0.1:$2/ws" 4 "$3" "$size" \
      -H "Origin: http://127.0.0.1:$2" -H "Cookie: $COOKIE" >"$4" 2>&1
    ;;
  esac
}

# completed MODE OUTFILE: requests or messages the load completed (dies on errors).
completed() {
  local errors
  case $1 in
  cookie | bearer)
    errors=$(grep -c 'Non-2xx\|Socket errors' "$2" || true)
    ((errors == 0)) || { cat "$2" >&2; die "$1: errors under load"; }
    awk '/requests in/ {print $1}' "$2"
    ;;
  *)
    grep -q '"errors":0' "$2" || { cat "$2" >&2; die "$1: errors under load"; }
    sed -E 's/.*"messages":([0-9]+).*/\1/' "$2"
    ;;
  esac
}

# count NAME MODE PORT: warm-up, zero, 4 s of MODE, dump; prints the count per unit.
count() {
  local name=$1 mode=$2 port=$3 before dump="" n total unit=request
  [[ $mode == ws* ]] && unit=message
  load "$mode" "$port" 2 /dev/null
  callgrind_control -z "$GATE_PID" >/dev/null
  load "$mode" "$port" 4 "$WORK/load.txt"
  before=$(find "$WORK" -name "callgrind-$name.*.*" | wc -l)
  callgrind_control -d "$mode" "$GATE_PID" >/dev/null
  for _ in $(seq 50); do
    if (($(find "$WORK" -name "callgrind-$name.*.*" | wc -l) > before)); then
      dump=$(ls -t "$WORK/callgrind-$name".*.* | head -1)
      break
    fi
    sleep 0.1
  done
  [[ -n $dump ]] || die "callgrind wrote no dump for $name"
  mv "$dump" "$WORK/callgrind-$name.$mode"
  dump="$WORK/callgrind-$name.$mode"
  sleep 0.5
  n=$(completed "$mode" "$WORK/load.txt")
  total=$(awk '/^summary:/ {print $2}' "$dump")
  awk -v bin="$BIN" -v mode="$mode" -v t="$total" -v n="$n" -v unit="$unit" \
    'BEGIN { printf "%s %-6s %7.0f instructions per %s (%d)\n", bin, mode, t / n, unit, n }'
  if ((${BENCH_TOP:-25} > 0)); then
    callgrind_annotate --inclusive=yes "$dump" 2>/dev/null | grep -E '^ *[0-9,]+ \(' | sed -n '2,$p' |
      grep -v 'tokio::runtime\|ssogate::main\|std::rt::\|libc_start\|(below main)\|???:' |
      sed -E 's/ \( *[0-9.]+%\)//; s/ \[[^]]*\]$//; s#/root/.cargo/registry/src/[^/]+/##; s#/rustc/[0-9a-f]+/library/##' |
      awk -v n="$n" '{c=$1; gsub(",", "", c); $1=""; printf "  %7.0f %s\n", c / n, $0}' |
      awk '!seen[$NF]++' | head -"${BENCH_TOP:-25}" || true
  fi
}

i=0
for BIN in "$@"; do
  if [[ -n $HTTP_MODES ]]; then
    port=${PORTS[$i]}
    gate_under_callgrind "$BIN" "$port" "$UP_PORT" "$i"
    COOKIE=$(signin_session "http://127.0.0.1:$port/hello")
    BEARER=$(signin_token "$port")
    for mode in $HTTP_MODES; do count "$i" "$mode" "$port"; done
    kill -TERM "$GATE_PID" 2>/dev/null || true
  fi
  if [[ -n $WS_MODES ]]; then
    port=${PORTS[$((N + i))]}
    gate_under_callgrind "$BIN" "$port" "$ECHO_PORT" "ws$i"
    COOKIE=$(signin_session "http://127.0.0.1:$port/hello")
    for mode in $WS_MODES; do count "ws$i" "$mode" "$port"; done
    kill -TERM "$GATE_PID" 2>/dev/null || true
  fi
  i=$((i + 1))
done

if [[ -n ${BENCH_NGINX:-} ]]; then
  read -r NGX_HTTP NGX_WS < <(free_ports 2)
  dir="$WORK/nginx-proxy"
  mkdir -p "$dir"
  blocks=$UPGRADE_MAP
  [[ -n $HTTP_MODES ]] && blocks+=$'\n'$(proxy_block "$NGX_HTTP" "$UP_PORT" 4k)
  [[ -n $WS_MODES ]] && blocks+=$'\n'$(proxy_block "$NGX_WS" "$ECHO_PORT" 1k)
  nginx_conf "$dir" 1 "$blocks"
  nginx -t -q -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" 2>"$dir/test.log" ||
    { cat "$dir/test.log" >&2; die "nginx config $dir/nginx.conf is invalid"; }
  valgrind --tool=callgrind --callgrind-out-file="$WORK/callgrind-nginx.%p" \
    nginx -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" -g 'daemon off; master_process off;' \
    </dev/null >"$dir/stdout.log" 2>&1 &
  # count() reads the process under callgrind from GATE_PID and the name
  # it prints from BIN.
  GATE_PID=$!
  track "$GATE_PID"
  BIN=nginx
  if [[ -n $HTTP_MODES ]]; then
    wait_http "http://127.0.0.1:$NGX_HTTP/hello" 200 30
    for mode in $HTTP_MODES; do count nginx "$mode" "$NGX_HTTP"; done
  fi
  if [[ -n $WS_MODES ]]; then
    wait_http "http://127.0.0.1:$NGX_WS/" 200 30
    for mode in $WS_MODES; do count nginx "$mode" "$NGX_WS"; done
  fi
fi
