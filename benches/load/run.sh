#!/usr/bin/env bash
# Load benchmark of ssogate against the upstream directly, a plain nginx
# reverse proxy and Apache httpd + mod_auth_openidc, on loopback, in
# interleaved rounds. See benches/load/README.md.
#
#   benches/load/run.sh
#
# Settings (environment): BENCH_DURATION (s, 10), BENCH_WARMUP (s, 2),
# BENCH_ROUNDS (3), BENCH_CONNECTIONS (64), BENCH_THREADS (wrk threads, 2),
# BENCH_OUT (benches/load/results.json), BENCH_KEEP=1 keeps the work directory,
# BENCH_ONLY=gate_cookie,gate_bearer… measures just those variants (plus the
# direct and nginx runs their ratios need, and nginx_same for the gate's
# cookie rows), for a quick look, BENCH_GATE_ENV="CT_WORKER_THREADS=1 …" adds
# settings to every gate,
# BENCH_PERF=SECONDS first profiles a separate, unstripped gate (built in
# target/bench-profile: a few minutes the first time) with perf under the
# cookie and the bearer load, before the measured rounds.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

DURATION=${BENCH_DURATION:-10}
WARMUP=${BENCH_WARMUP:-2}
ROUNDS=${BENCH_ROUNDS:-3}
CONNECTIONS=${BENCH_CONNECTIONS:-64}
THREADS=${BENCH_THREADS:-2}
OUT=${BENCH_OUT:-$BENCH_DIR/results.json}

setup_work
ensure_packages curl
command -v node >/dev/null || die "node is needed (the test provider is node)"
build_gate

read -r UP_PORT H2C_PORT PROXY_PORT APACHE_PORT GATE_PORT GATE_INFO_PORT GATE_H2_PORT PERF_PORT GATE_B_PORT PROXY_RP_PORT < <(free_ports 10)

start_upstream "$UP_PORT" "$H2C_PORT" # HTTP/1.1, and h2c for the gate with CT_UPSTREAM_HTTP2
start_proxy "$PROXY_PORT" "$UP_PORT" 4k # nginx_same sends it the gate's 1.3 KB cookie
# The same proxy with a listening socket per worker (reuseport): the kernel
# spreads new connections over its workers, as the gate spreads them over its
# serving threads (src/server/balance.rs). Not Debian's default, so a row of
# its own (nginx_rp) beside the plain one.
NGINX_PID_SAVED=$PROXY_PID
start_proxy "$PROXY_RP_PORT" "$UP_PORT" 4k nginx-proxy-reuseport reuseport
PROXY_RP_PID=$PROXY_PID
PROXY_PID=$NGINX_PID_SAVED
start_idp "http://127.0.0.1:$GATE_PORT/sso/authorization-code/callback,http://127.0.0.1:$GATE_INFO_PORT/sso/authorization-code/callback,http://127.0.0.1:$GATE_H2_PORT/sso/authorization-code/callback,http://127.0.0.1:$PERF_PORT/sso/authorization-code/callback,http://127.0.0.1:$GATE_B_PORT/sso/authorization-code/callback,http://127.0.0.1:$APACHE_PORT/redirect_uri" \
  "http://127.0.0.1:$GATE_PORT/sso/logout,http://127.0.0.1:$GATE_INFO_PORT/sso/logout"
start_apache "$APACHE_PORT" "$UP_PORT"
start_gate "$GATE_PORT" "$UP_PORT" warn "$WORK/gate.log"
GATE_MAIN_PID=$GATE_PID
start_gate "$GATE_INFO_PORT" "$UP_PORT" info "$WORK/gate-info.log"
GATE_INFO_PID=$GATE_PID
# The same gate speaking HTTP/2 to the upstream (its h2c port).
BENCH_GATE_ENV="${BENCH_GATE_ENV:-} CT_UPSTREAM_HTTP2=true" start_gate "$GATE_H2_PORT" "$H2C_PORT" warn "$WORK/gate-h2.log"
GATE_H2_PID=$GATE_PID
# BENCH_GATE_B=PATH: a second gate binary (another build) measured in the same
# rounds, right after the first, for a comparison the machine's drift cannot skew.
GATE_B_PID=0
if [[ -n ${BENCH_GATE_B:-} ]]; then
  [[ -x $BENCH_GATE_B ]] || die "BENCH_GATE_B=$BENCH_GATE_B is not an executable"
  GATE_BIN_SAVED=$GATE_BIN
  GATE_BIN=$BENCH_GATE_B
  start_gate "$GATE_B_PORT" "$UP_PORT" warn "$WORK/gate-b.log"
  GATE_B_PID=$GATE_PID
  GATE_BIN=$GATE_BIN_SAVED
fi
say "upstream :$UP_PORT  nginx :$PROXY_PORT  apache :$APACHE_PORT  gate :$GATE_PORT (warn)  gate :$GATE_INFO_PORT (info)"

say "start to ready (5 runs, polled every 5 ms)"
gate_envs 0 "$UP_PORT" warn
READY_JSON=$(cd "$WORK" && env -i "${GATE_ENVS[@]}" "$(command -v node)" "$BENCH_DIR/ready.mjs" "$GATE_BIN" 5)
say "ready: $READY_JSON"

say "scripted sign-ins (alice)"
GATE_COOKIE=$(signin_session "http://127.0.0.1:$GATE_PORT/hello")
GATE_INFO_COOKIE=$(signin_session "http://127.0.0.1:$GATE_INFO_PORT/hello")
GATE_H2_COOKIE=$(signin_session "http://127.0.0.1:$GATE_H2_PORT/hello")
GATE_B_COOKIE=
if [[ -n ${BENCH_GATE_B:-} ]]; then
  GATE_B_COOKIE=$(signin_session "http://127.0.0.1:$GATE_B_PORT/hello")
fi
APACHE_COOKIE=$(signin_session "http://127.0.0.1:$APACHE_PORT/hello")
BEARER=$(signin_token "$GATE_PORT")
say "gate cookie ${#GATE_COOKIE} B, Apache cookie ${#APACHE_COOKIE} B, ID token ${#BEARER} B"

# perf_profile NAME SECONDS VAR=VALUE...: wrk against the profiled gate with
# the given wrk.lua settings; flat (self) and inclusive (DWARF call graphs)
# top symbols into benches/load/perf-NAME-{self,children}.txt.
perf_profile() {
  local name=$1 secs=$2
  shift 2
  env "$@" wrk -t"$THREADS" -c"$CONNECTIONS" -d"$((2 * secs + 3))s" -s "$BENCH_DIR/wrk.lua" \
    "http://127.0.0.1:$PERF_PORT/hello" >"$WORK/perf-$name-wrk.log" 2>&1 &
  local wrk_pid=$!
  track "$wrk_pid"
  sleep 1
  perf record -F 1999 -p "$PERF_PID" -o "$WORK/perf-$name.data" -- sleep "$secs" >/dev/null 2>&1 || say "perf record failed"
  perf record -F 199 --call-graph dwarf,16384 -p "$PERF_PID" -o "$WORK/perf-$name-cg.data" -- sleep "$secs" >/dev/null 2>&1 ||
    say "perf record --call-graph failed"
  wait "$wrk_pid" || true
  # Self time by symbol, and by binary (gate / kernel / libc).
  { perf report -i "$WORK/perf-$name.data" --no-children --sort dso --stdio 2>/dev/null | grep -E '^ +[0-9]' | head -6
    echo
    perf report -i "$WORK/perf-$name.data" --no-children --sort symbol --stdio 2>/dev/null | grep -E '^ +[0-9]' | head -40
  } | sed -E 's/[[:space:]-]+$//' >"$BENCH_DIR/perf-$name-self.txt" || true
  # Inclusive time of the gate's own functions (and the crates they call on the hot path).
  perf report -i "$WORK/perf-$name-cg.data" --children --sort symbol --stdio -g none 2>/dev/null |
    grep -E '^ +[0-9]' | grep -v '(inlined)' | sed -E 's/[[:space:]-]+$//' |
    grep -E 'ssogate::|aes_gcm|base64|serde_json|jsonwebtoken|num_bigint|rsa::|hyper_util::client|tracing|metrics|malloc|free|memmove' |
    head -40 >"$BENCH_DIR/perf-$name-children.txt" || true
  say "perf $name: benches/load/perf-$name-self.txt, perf-$name-children.txt"
}

if [[ -n ${BENCH_PERF:-} ]]; then
  command -v perf >/dev/null || ensure_packages linux-perf
  GATE_BIN_SAVED=$GATE_BIN
  build_profile_gate
  start_gate "$PERF_PORT" "$UP_PORT" warn "$WORK/gate-perf.log"
  PERF_PID=$GATE_PID
  GATE_BIN=$GATE_BIN_SAVED
  PERF_COOKIE=$(signin_session "http://127.0.0.1:$PERF_PORT/hello")
  perf_profile cookie "$BENCH_PERF" BENCH_COOKIE="$PERF_COOKIE"
  perf_profile bearer "$BENCH_PERF" BENCH_BEARER="$BEARER"
  kill -TERM "$PERF_PID" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$PERF_PID" 2>/dev/null || break; sleep 0.1; done
fi

export GATE_COOKIE GATE_INFO_COOKIE GATE_H2_COOKIE GATE_B_COOKIE APACHE_COOKIE BEARER
G="http://127.0.0.1:$GATE_PORT"
JSON_ACCEPT="application/json"
HTML_ACCEPT="text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
node - "$WORK/bench-config.json" <<EOF
const fs = require('fs');
const v = (id, name, group, url, server, expect, more = {}) => ({
  id, name, group, url, server, expect,
  base: group === '64k' ? 'direct_64k' : 'direct', nginx: group === '64k' ? 'nginx_64k' : 'nginx', ...more,
});
const tiny = '/hello';
const big = '/static/64k.bin';
const cookie = process.env.GATE_COOKIE;
fs.writeFileSync(process.argv[2], JSON.stringify({
  duration: $DURATION, warmup: $WARMUP, rounds: $ROUNDS, connections: $CONNECTIONS, threads: $THREADS,
  clk_tck: $(getconf CLK_TCK), wrk_lua: '$BENCH_DIR/wrk.lua',
  procs: { upstream: $UPSTREAM_PID, nginx: $PROXY_PID, nginx_rp: $PROXY_RP_PID, apache: $APACHE_PID, gate: $GATE_MAIN_PID, gate_info: $GATE_INFO_PID, gate_h2: $GATE_H2_PID, ...($GATE_B_PID ? { gate_b: $GATE_B_PID } : {}) },
  extra: {
    ready: $READY_JSON,
    commit: '$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$REPO" diff --quiet HEAD -- src Cargo.toml Cargo.lock 2>/dev/null || echo -dirty)',
    rust_log: 'warn for every gate row but "ssogate cookie, RUST_LOG=info" (a second gate, its log to a file)',
    servers: {
      upstream: 'nginx $(nginx -v 2>&1 | sed 's/.*\///'), worker_processes auto (2), return 200 "ok\\\\n" / 64 KiB static file, client_header_buffer_size 4k, a second port with http2 (h2c, prior knowledge) for gate_cookie_h2',
      nginx: 'nginx reverse proxy, worker_processes 2, proxy_http_version 1.1, upstream keepalive 256, client_header_buffer_size 4k',
      nginx_rp: 'the same nginx reverse proxy listening with reuseport',
      apache: '$(/usr/sbin/apache2 -v | head -1 | sed 's/Server version: //'), mpm_event 2x64 threads, mod_auth_openidc $(dpkg-query -W -f='${Version}' libapache2-mod-auth-openidc 2>/dev/null), OIDCCacheType shm, OIDCSessionType server-cache',
      gate: 'ssogate release, 2 serving threads (a current-thread runtime each), plain http',
    },
    cookie_bytes: { gate: ${#GATE_COOKIE}, apache: ${#APACHE_COOKIE} }, bearer_bytes: ${#BEARER},
  },
  variants: [
    v('direct', 'direct upstream', 'tiny', 'http://127.0.0.1:$UP_PORT' + tiny, 'upstream', 200),
    v('nginx', 'nginx proxy', 'tiny', 'http://127.0.0.1:$PROXY_PORT' + tiny, 'nginx', 200),
    // The bytes gate_cookie sends, through nginx (which forwards the cookie): like for like.
    v('nginx_same', 'nginx proxy, same request', 'tiny', 'http://127.0.0.1:$PROXY_PORT' + tiny, 'nginx', 200, { cookie }),
    // The bare request through nginx listening with reuseport.
    v('nginx_rp', 'nginx proxy, reuseport', 'tiny', 'http://127.0.0.1:$PROXY_RP_PORT' + tiny, 'nginx_rp', 200),
    v('apache', 'Apache+mod_auth_openidc', 'tiny', 'http://127.0.0.1:$APACHE_PORT' + tiny, 'apache', 200, { cookie: process.env.APACHE_COOKIE }),
    v('gate_cookie', 'ssogate cookie', 'tiny', '$G' + tiny, 'gate', 200, { cookie, same: 'nginx_same', rp: 'nginx_rp' }),
    v('gate_bearer', 'ssogate bearer JWT', 'tiny', '$G' + tiny, 'gate', 200, { bearer: process.env.BEARER, rp: 'nginx_rp' }),
    ...(process.env.GATE_B_COOKIE ? [
      v('gate_b_cookie', 'ssogate B cookie', 'tiny', 'http://127.0.0.1:$GATE_B_PORT' + tiny, 'gate_b', 200, { cookie: process.env.GATE_B_COOKIE, same: 'nginx_same' }),
      v('gate_b_bearer', 'ssogate B bearer JWT', 'tiny', 'http://127.0.0.1:$GATE_B_PORT' + tiny, 'gate_b', 200, { bearer: process.env.BEARER }),
    ] : []),
    v('gate_401', 'ssogate 401 (API, no cookie)', 'tiny', '$G' + tiny, 'gate', 401, { accept: '$JSON_ACCEPT' }),
    v('gate_302', 'ssogate 302 (browser, no cookie)', 'tiny', '$G' + tiny, 'gate', 302, { accept: '$HTML_ACCEPT' }),
    v('direct_64k', 'direct upstream 64 KiB', '64k', 'http://127.0.0.1:$UP_PORT' + big, 'upstream', 200, { body_bytes: 65536 }),
    v('nginx_64k', 'nginx proxy 64 KiB', '64k', 'http://127.0.0.1:$PROXY_PORT' + big, 'nginx', 200, { body_bytes: 65536 }),
    v('gate_cookie_64k', 'ssogate cookie 64 KiB', '64k', '$G' + big, 'gate', 200, { cookie, body_bytes: 65536 }),
    ...(process.env.GATE_B_COOKIE ? [
      v('gate_b_cookie_64k', 'ssogate B cookie 64 KiB', '64k', 'http://127.0.0.1:$GATE_B_PORT' + big, 'gate_b', 200, { cookie: process.env.GATE_B_COOKIE, body_bytes: 65536 }),
    ] : []),
    // CT_UPSTREAM_HTTP2=true: one HTTP/2 connection per serving thread to the upstream's h2c port.
    v('gate_cookie_h2', 'ssogate cookie, HTTP/2 upstream', 'tiny', 'http://127.0.0.1:$GATE_H2_PORT' + tiny, 'gate_h2', 200, { cookie: process.env.GATE_H2_COOKIE, same: 'nginx_same' }),
    v('gate_cookie_info', 'ssogate cookie, RUST_LOG=info', 'tiny', 'http://127.0.0.1:$GATE_INFO_PORT' + tiny, 'gate_info', 200, { cookie: process.env.GATE_INFO_COOKIE }),
  ],
}, null, 2));
EOF
[[ -s "$WORK/bench-config.json" ]] || die "no bench config"

say "checking every variant, then $ROUNDS rounds x $(node -e 'console.log(JSON.parse(require("fs").readFileSync(process.argv[1])).variants.length)' "$WORK/bench-config.json") variants x (${WARMUP}s warm-up + ${DURATION}s), $CONNECTIONS connections"
node "$BENCH_DIR/bench.mjs" "$WORK/bench-config.json" "$OUT"
grep -E ' (ERROR|WARN) ' "$WORK/gate.log" | head -5 >&2 || true
say "done in ${SECONDS}s"
