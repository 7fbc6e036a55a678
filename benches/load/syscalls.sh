#!/usr/bin/env bash
# What a proxied request costs the kernel, per request: the proxy's system
# calls by kind, the packets sent on loopback (by everyone: wrk, proxy,
# upstream), and the proxy's user and system CPU time. For nginx (bare
# request; the gate's cookie request; listening with reuseport) and the gate
# with a session cookie. It shows where the CPU time of benches/load/run.sh's
# rows goes: nearly all of it is the kernel's TCP work, which is the same for
# every proxy that sends one segment each way on each connection.
#
#   benches/load/syscalls.sh
#
# Settings: BENCH_ROUNDS (3, alternating rounds for the CPU split; medians
# shown), BENCH_DURATION (s, 8), BENCH_CONNECTIONS (64), BENCH_THREADS (2).
# Counting uses perf's tracepoints (raw_syscalls, syscalls, net), so it needs
# root or kernel.perf_event_paranoid ≤ -1 and tracefs; linux-perf is
# installed when missing. The counts are exact; the CPU split drifts with the
# machine as run.sh's figures do.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

ROUNDS=${BENCH_ROUNDS:-3}
DURATION=${BENCH_DURATION:-8}
CONNECTIONS=${BENCH_CONNECTIONS:-64}
THREADS=${BENCH_THREADS:-2}

setup_work
ensure_packages curl
command -v perf >/dev/null || ensure_packages linux-perf
command -v node >/dev/null || die "node is needed (the test provider is node)"
TRACEFS=/sys/kernel/tracing
[[ -d $TRACEFS/events/raw_syscalls ]] || TRACEFS=/sys/kernel/debug/tracing
[[ -d $TRACEFS/events/raw_syscalls ]] || die "no tracefs with syscall tracepoints (mount tracefs, run as root)"
build_gate

read -r UP_PORT PROXY_PORT PROXY_RP_PORT GATE_PORT < <(free_ports 4)
start_upstream "$UP_PORT"
start_proxy "$PROXY_PORT" "$UP_PORT" 4k
NGINX=$PROXY_PID
start_proxy "$PROXY_RP_PORT" "$UP_PORT" 4k nginx-proxy-reuseport reuseport
NGINX_RP=$PROXY_PID
start_idp "http://127.0.0.1:$GATE_PORT/sso/authorization-code/callback" "http://127.0.0.1:$GATE_PORT/sso/logout"
start_gate "$GATE_PORT" "$UP_PORT" warn "$WORK/gate.log"
GATE=$GATE_PID
COOKIE=$(signin_session "http://127.0.0.1:$GATE_PORT/hello")

# name pid url cookie
VARIANTS=(
  "nginx $NGINX http://127.0.0.1:$PROXY_PORT/hello -"
  "nginx_same $NGINX http://127.0.0.1:$PROXY_PORT/hello cookie"
  "nginx_rp $NGINX_RP http://127.0.0.1:$PROXY_RP_PORT/hello -"
  "gate_cookie $GATE http://127.0.0.1:$GATE_PORT/hello cookie"
)

# Every system call a proxy made is counted (raw_syscalls); these are also
# counted by name where the kernel has them.
EVENTS=raw_syscalls:sys_enter
for sc in read readv recvfrom recvmsg write writev sendto sendmsg epoll_wait epoll_pwait epoll_pwait2 epoll_ctl \
  futex accept4 close io_uring_enter; do
  [[ -d $TRACEFS/events/syscalls/sys_enter_$sc ]] && EVENTS+=",syscalls:sys_enter_$sc"
done

# wrk_run SECONDS URL COOKIE: wrk's JSON summary line (benches/load/wrk.lua).
wrk_run() {
  local c=""
  [[ $3 == cookie ]] && c=$COOKIE
  BENCH_COOKIE=$c wrk -t"$THREADS" -c"$CONNECTIONS" -d"$1s" -s "$BENCH_DIR/wrk.lua" "$2" | sed -n 's/^JSON //p'
}

# The threads of a process and its children, comma-separated.
threads_of() {
  local p
  for p in "$1" $(pgrep -P "$1"); do ls "/proc/$p/task"; done | paste -sd,
}

# utime and stime (clock ticks) of a process and its children.
ticks_of() {
  local p u=0 s=0 f
  for p in "$1" $(pgrep -P "$1"); do
    read -r -a f < <(sed 's/.*) //' "/proc/$p/stat")
    u=$((u + f[11])) s=$((s + f[12]))
  done
  echo "$u $s"
}

say "system calls and packets per request ($DURATION s of wrk each, $CONNECTIONS connections)"
COUNTS=()
for v in "${VARIANTS[@]}"; do
  read -r name pid url cookie <<<"$v"
  wrk_run 2 "$url" "$cookie" >/dev/null
  perf stat -x, -e "$EVENTS" -t "$(threads_of "$pid")" -o "$WORK/proc-$name.csv" &
  proc_perf=$!
  perf stat -x, -a -e net:net_dev_xmit -o "$WORK/all-$name.csv" &
  all_perf=$!
  sleep 0.2
  summary=$(wrk_run "$DURATION" "$url" "$cookie")
  kill -INT "$proc_perf" "$all_perf"
  wait "$proc_perf" "$all_perf" 2>/dev/null || true
  [[ -n $summary ]] || die "wrk printed no summary for $name"
  COUNTS+=("$name" "$summary" "$WORK/proc-$name.csv" "$WORK/all-$name.csv")
done

say "user and system CPU per request ($ROUNDS alternating rounds)"
SPLITS=()
for round in $(seq "$ROUNDS"); do
  for v in "${VARIANTS[@]}"; do
    read -r name pid url cookie <<<"$v"
    wrk_run 2 "$url" "$cookie" >/dev/null
    read -r u0 s0 < <(ticks_of "$pid")
    summary=$(wrk_run "$DURATION" "$url" "$cookie")
    read -r u1 s1 < <(ticks_of "$pid")
    SPLITS+=("$name" "$round" "$summary" "$((u1 - u0))" "$((s1 - s0))")
  done
done

node - "$(getconf CLK_TCK)" "${#COUNTS[@]}" "${COUNTS[@]}" "${SPLITS[@]}" <<'EOF'
const fs = require('fs');
const [tck, nCounts, ...rest] = process.argv.slice(2);
const counts = rest.slice(0, Number(nCounts));
const splits = rest.slice(Number(nCounts));
// perf stat -x, lines: value,unit,event,...
const read = (path) => Object.fromEntries(fs.readFileSync(path, 'utf8').split('\n')
  .filter((l) => l && !l.startsWith('#')).map((l) => l.split(','))
  .filter((f) => f.length > 2 && /^\d+$/.test(f[0])).map((f) => [f[2], Number(f[0])]));
const rows = [];
const names = [];
for (let i = 0; i < counts.length; i += 4) {
  const [name, summary, procCsv, allCsv] = counts.slice(i, i + 4);
  const n = JSON.parse(summary).requests;
  const ev = { ...read(procCsv), ...read(allCsv) };
  names.push(name);
  rows.push({ name, n, ev });
}
const kinds = new Set();
for (const r of rows) for (const k of Object.keys(r.ev)) if (k.startsWith('syscalls:') && r.ev[k] / r.n >= 0.005) kinds.add(k);
const f = (x, d = 2) => (Number.isFinite(x) ? x.toFixed(d) : '-');
const line = (cells) => `| ${cells.join(' | ')} |`;
console.log('\nper request (exact counts over one wrk run each):\n');
console.log(line(['', ...names]));
console.log(line([':--', ...names.map(() => '--:')]));
console.log(line(['system calls, all', ...rows.map((r) => f(r.ev['raw_syscalls:sys_enter'] / r.n))]));
for (const k of [...kinds].sort()) {
  console.log(line([`  ${k.replace('syscalls:sys_enter_', '')}`, ...rows.map((r) => f((r.ev[k] ?? 0) / r.n))]));
}
console.log(line(['packets on loopback (everyone)', ...rows.map((r) => f(r.ev['net:net_dev_xmit'] / r.n))]));

const median = (xs) => { const s = [...xs].sort((a, b) => a - b); const m = s.length >> 1; return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2; };
const per = {};
for (let i = 0; i < splits.length; i += 5) {
  const [name, round, summary, u, s] = splits.slice(i, i + 5);
  const r = JSON.parse(summary);
  const us = 1e6 / Number(tck) / r.requests;
  (per[name] ??= []).push({ round: Number(round), rps: r.requests / (r.duration_us / 1e6), user: Number(u) * us, sys: Number(s) * us });
}
console.log('\nCPU µs per request, median over rounds (per round in brackets):\n');
console.log(line(['', 'req/s', 'user', 'system', 'total']));
console.log(line([':--', '--:', '--:', '--:', '--:']));
for (const name of names) {
  const xs = per[name] ?? [];
  const col = (k, d) => `${f(median(xs.map((x) => x[k])), d)} (${xs.map((x) => f(x[k], d)).join(', ')})`;
  const total = xs.map((x) => x.user + x.sys);
  console.log(line([name, col('rps', 0), col('user', 2), col('sys', 2), `${f(median(total), 2)} (${total.map((t) => f(t, 2)).join(', ')})`]));
}
EOF
say "done in ${SECONDS}s"
