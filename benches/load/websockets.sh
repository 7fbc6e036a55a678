#!/usr/bin/env bash
# WebSocket benchmark: memory of idle connections held through ssogate and
# through nginx, and echo throughput direct / nginx / Apache with
# mod_auth_openidc / ssogate, on loopback.
# See benches/load/README.md.
#
#   benches/load/websockets.sh
#
# Settings (environment): WS_IDLE (10000, lowered to what the open-files hard
# limit allows: the gate holds two descriptors per connection), WS_DURATION
# (s, 8), WS_WARMUP (s, 1), WS_ROUNDS (3), WS_CONNECTIONS (64), WS_SIZES
# ("64 16384"), WS_OUT (benches/load/results-ws.json), BENCH_KEEP=1.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

DURATION=${WS_DURATION:-8}
WARMUP=${WS_WARMUP:-1}
ROUNDS=${WS_ROUNDS:-3}
CONNECTIONS=${WS_CONNECTIONS:-64}
SIZES=${WS_SIZES:-64 16384}
OUT=${WS_OUT:-$BENCH_DIR/results-ws.json}

setup_work
ensure_packages curl
command -v node >/dev/null || die "node is needed (the test provider is node)"
build_gate
build_wstool

HARD_NOFILE=$(ulimit -Hn)
IDLE=${WS_IDLE:-10000}
if [[ $HARD_NOFILE != unlimited ]] && ((IDLE * 2 + 200 > HARD_NOFILE)); then
  MAX=$(((HARD_NOFILE - 200) / 2))
  say "open-files hard limit is $HARD_NOFILE (no CAP_SYS_RESOURCE to raise it): a proxy needs 2 per connection, so $MAX idle connections instead of $IDLE"
  IDLE=$MAX
fi
# Client side from several loopback source addresses: no ephemeral-port limit.
SOURCES="127.0.0.11,127.0.0.12,127.0.0.13,127.0.0.14"

read -r ECHO_PORT PROXY_PORT GATE_PORT APACHE_PORT < <(free_ports 4)

start_wstool_echo "$ECHO_PORT"
UPSTREAM_PID=$ECHO_PID

start_proxy "$PROXY_PORT" "$ECHO_PORT"
start_idp "http://127.0.0.1:$GATE_PORT/sso/authorization-code/callback,http://127.0.0.1:$APACHE_PORT/redirect_uri" \
  "http://127.0.0.1:$GATE_PORT/sso/logout"
start_apache "$APACHE_PORT" "$ECHO_PORT" upgrade=websocket
start_gate "$GATE_PORT" "$ECHO_PORT" warn "$WORK/gate.log"
say "echo upstream :$ECHO_PORT  nginx :$PROXY_PORT  apache :$APACHE_PORT  gate :$GATE_PORT"

say "scripted sign-ins (alice)"
GATE_COOKIE=$(signin_session "http://127.0.0.1:$GATE_PORT/hello")
APACHE_COOKIE=$(signin_session "http://127.0.0.1:$APACHE_PORT/hello")
export GATE_COOKIE APACHE_COOKIE

node - "$WORK/ws-config.json" <<EOF
const fs = require('fs');
const origin = (p) => 'Origin: http://127.0.0.1:' + p;
fs.writeFileSync(process.argv[2], JSON.stringify({
  wstool: '$WSTOOL', duration: $DURATION, warmup: $WARMUP, rounds: $ROUNDS, connections: $CONNECTIONS,
  sizes: '$SIZES'.split(' ').map(Number), idle_conns: $IDLE, sources: '$SOURCES'.split(','), clk_tck: $(getconf CLK_TCK),
  procs: { upstream: $UPSTREAM_PID, nginx: $PROXY_PID, apache: $APACHE_PID, gate: $GATE_PID },
  targets: [
    { id: 'direct', name: 'direct upstream', url: 'ws://127.0.0.1:$ECHO_PORT/ws', headers: [origin($ECHO_PORT)], server: 'upstream' },
    // Echo only: the idle test is the gate's (nginx for reference).
    { id: 'apache', name: 'Apache+mod_auth_openidc (cookie)', url: 'ws://127.0.0.1:$APACHE_PORT/ws', headers: [origin($APACHE_PORT), 'Cookie: ' + process.env.APACHE_COOKIE], server: 'apache' },
    // nginx and the gate run one after the other in every round (the order
    // turns round each round), so their per-round ratio compares like with like.
    { id: 'nginx', name: 'nginx proxy', url: 'ws://127.0.0.1:$PROXY_PORT/ws', headers: [origin($PROXY_PORT)], server: 'nginx' },
    { id: 'gate', name: 'ssogate (cookie)', url: 'ws://127.0.0.1:$GATE_PORT/ws', headers: [origin($GATE_PORT), 'Cookie: ' + process.env.GATE_COOKIE], server: 'gate' },
  ],
  refused: { id: 'gate', headers: [origin($GATE_PORT), 'Accept: application/json'] },
  idle_targets: ['gate', 'nginx'],
  extra: {
    open_files_hard_limit: '$HARD_NOFILE', rust_log: 'warn',
    commit: '$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$REPO" diff --quiet HEAD -- src Cargo.toml Cargo.lock 2>/dev/null || echo -dirty)',
    servers: {
      upstream: 'benches/load/wstool echo (tokio-tungstenite, 2 threads)',
      nginx: 'nginx $(nginx -v 2>&1 | sed 's/.*\///'), worker_processes 2, proxy_http_version 1.1, Upgrade/Connection passed',
      apache: '$(/usr/sbin/apache2 -v | head -1 | sed 's/Server version: //'), mpm_event 2x64 threads, mod_auth_openidc $(dpkg-query -W -f='${Version}' libapache2-mod-auth-openidc 2>/dev/null), OIDCCacheType shm, ProxyPass upgrade=websocket',
      gate: 'ssogate release, 2 serving threads (a current-thread runtime each), plain http, session cookie',
    },
  },
}, null, 2));
EOF

say "checks, idle connections ($IDLE through the gate, then nginx), then $ROUNDS rounds of echo (sizes $SIZES, $CONNECTIONS connections, ${WARMUP}s + ${DURATION}s)"
node "$BENCH_DIR/wsbench.mjs" "$WORK/ws-config.json" "$OUT"
say "done in ${SECONDS}s"
