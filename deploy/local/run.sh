#!/usr/bin/env bash
# shellcheck disable=SC2317  # functions called indirectly (traps, wait_for)
# Runs ssogate on this machine in one command: a demo application, a test
# OpenID provider and the gate in front of the application.
#
#   deploy/local/run.sh [--no-build]
#
#   demo upstream   http://127.0.0.1:9000   deploy/local/demo-upstream.mjs
#   provider        http://127.0.0.1:9001   tests/idp/server.mjs (users alice/alice-pass, bob/bob-pass)
#   gate            http://localhost:8443   target/release/ssogate
#
# Needs node (>= 20.19) with npm, and cargo. Ports can be changed with
# DEMO_UPSTREAM_PORT, DEMO_IDP_PORT and DEMO_GATE_PORT. Writes
# deploy/local/.env.local (the gate's settings, with freshly generated
# secrets) and deploy/local/logs/. Ctrl-C stops everything.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
IDP_DIR="$ROOT/tests/idp"
LOG_DIR="$HERE/logs"
ENV_LOCAL="$HERE/.env.local"
BIN="$ROOT/target/release/ssogate"

UPSTREAM_PORT="${DEMO_UPSTREAM_PORT:-9000}"
IDP_PORT="${DEMO_IDP_PORT:-9001}"
GATE_PORT="${DEMO_GATE_PORT:-8443}"
GATE_URL="http://localhost:$GATE_PORT"
CLIENT_ID="ssogate-local"

BUILD=1
for arg in "$@"; do
  case "$arg" in
    --no-build) BUILD=0 ;;
    -h | --help)
      sed -n '3,15p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
      exit 0
      ;;
    *)
      echo "run.sh: unknown argument: $arg (try --help)" >&2
      exit 2
      ;;
  esac
done

say() {
  if [ -t 1 ]; then printf '\033[1m==> %s\033[0m\n' "$*"; else printf '==> %s\n' "$*"; fi
}
die() {
  printf 'run.sh: %s\n' "$*" >&2
  exit 1
}

# ---- processes, and stopping them -------------------------------------------

UPSTREAM_PID=""
IDP_PID=""
GATE_PID=""

stop_pid() { # name pid seconds: TERM, wait, then KILL
  local name="$1" pid="$2" waited=0
  [ -n "$pid" ] || return 0
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  while kill -0 "$pid" 2>/dev/null; do
    if [ "$waited" -ge "$(($3 * 10))" ]; then
      echo "run.sh: $name did not stop in $3 s; killing it" >&2
      kill -KILL "$pid" 2>/dev/null || true
      break
    fi
    sleep 0.1
    waited=$((waited + 1))
  done
  wait "$pid" 2>/dev/null || true
}

cleanup() {
  trap - EXIT INT TERM
  # Keep going when stdout is gone (e.g. `run.sh | tee` after Ctrl-C).
  trap '' PIPE
  set +e
  if [ -n "$GATE_PID$IDP_PID$UPSTREAM_PID" ]; then
    say "stopping"
  fi
  stop_pid gate "$GATE_PID" 35
  stop_pid provider "$IDP_PID" 5
  stop_pid "demo upstream" "$UPSTREAM_PID" 5
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---- helpers ------------------------------------------------------------------

# Prints the HTTP status of a GET to $1 (0 when nothing answers).
http_status() {
  node -e '
    fetch(process.argv[1], { redirect: "manual", signal: AbortSignal.timeout(2000) })
      .then((r) => console.log(r.status), () => console.log(0));
  ' "$1"
}

port_busy() { # host port
  (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null
}

# Waits up to $2 seconds for process $1 (named $3) to make $4 (a command) succeed.
wait_for() {
  local pid="$1" seconds="$2" name="$3" tries=0
  shift 3
  until "$@"; do
    if ! kill -0 "$pid" 2>/dev/null; then
      return 1
    fi
    tries=$((tries + 1))
    if [ "$tries" -ge "$((seconds * 4))" ]; then
      die "$name did not become ready in $seconds s"
    fi
    sleep 0.25
  done
}

show_log() { # file
  echo "---- last lines of $1:" >&2
  tail -n 30 "$1" >&2 || true
}

random_b64() { # bytes
  head -c "$1" /dev/urandom | base64 | tr -d '\n'
}

# The value run.sh sets for a variable, if it sets one ("" is a value too);
# exit status 1 when the variable keeps .env.example's value.
local_value() {
  case "$1" in
    CT_SERVER_URL) echo "$GATE_URL" ;;
    CT_UPSTREAM_URL) echo "http://127.0.0.1:$UPSTREAM_PORT" ;;
    CT_LISTEN_ADDR) echo "127.0.0.1:$GATE_PORT" ;;
    CT_SSO_AUTHORIZATION_ENDPT) echo "$ISSUER" ;;
    CT_SSO_TOKEN_ENDPT) echo "$TOKEN_ENDPOINT" ;;
    CT_SSO_CLIENT_ID) echo "$CLIENT_ID" ;;
    CT_SSO_CLIENT_SECRET) echo "$CLIENT_SECRET" ;;
    CT_COOKIE_SECRET) echo "$COOKIE_SECRET" ;;
    CT_SSO_SCOPES) echo "openid profile email offline_access" ;;
    RUST_LOG) echo "${RUST_LOG:-info}" ;;
    *) return 1 ;;
  esac
}

# Writes .env.local: .env.example line by line, with run.sh's values.
write_env_local() {
  local line key value
  (
    umask 077
    {
      echo "# Written by deploy/local/run.sh at $(date -u +%Y-%m-%dT%H:%M:%SZ) from .env.example; rewritten on every run."
      while IFS= read -r line || [ -n "$line" ]; do
        key="${line%%=*}"
        if [ "$key" != "$line" ] && [[ "$key" =~ ^[A-Z_][A-Z0-9_]*$ ]] && value="$(local_value "$key")"; then
          printf '%s="%s"\n' "$key" "$value"
        else
          printf '%s\n' "$line"
        fi
      done <"$ROOT/.env.example"
    } >"$ENV_LOCAL"
  )
  chmod 600 "$ENV_LOCAL"
}

# ---- checks -------------------------------------------------------------------

command -v node >/dev/null || die "node is required (>= 20.19): https://nodejs.org/"
command -v npm >/dev/null || die "npm is required (it comes with node)"
command -v cargo >/dev/null || die "cargo is required: https://rustup.rs/"
node -e '
  const [maj, min] = process.versions.node.split(".").map(Number);
  if (maj < 20 || (maj === 20 && min < 19)) process.exit(1);
' || die "node >= 20.19 is required, found $(node --version)"
[ -f "$ROOT/.env.example" ] || die "missing $ROOT/.env.example"
[ -f "$IDP_DIR/server.mjs" ] || die "missing $IDP_DIR/server.mjs"

for port in "$UPSTREAM_PORT" "$IDP_PORT" "$GATE_PORT"; do
  if port_busy 127.0.0.1 "$port"; then
    die "port $port is in use on 127.0.0.1 (set DEMO_UPSTREAM_PORT, DEMO_IDP_PORT or DEMO_GATE_PORT)"
  fi
done

mkdir -p "$LOG_DIR"

# ---- build --------------------------------------------------------------------

if [ ! -f "$IDP_DIR/node_modules/.package-lock.json" ] ||
  [ "$IDP_DIR/package-lock.json" -nt "$IDP_DIR/node_modules/.package-lock.json" ]; then
  say "installing the test provider's packages (npm ci in tests/idp)"
  (cd "$IDP_DIR" && npm ci --no-audit --no-fund)
fi

if [ "$BUILD" = 1 ]; then
  say "building the gate (cargo build --release)"
  (cd "$ROOT" && cargo build --release)
fi
[ -x "$BIN" ] || die "$BIN is missing: run without --no-build"

# ---- demo upstream ------------------------------------------------------------

say "starting the demo upstream on http://127.0.0.1:$UPSTREAM_PORT"
DEMO_UPSTREAM_HOST=127.0.0.1 DEMO_UPSTREAM_PORT="$UPSTREAM_PORT" \
  node "$HERE/demo-upstream.mjs" >"$LOG_DIR/upstream.log" 2>&1 &
UPSTREAM_PID=$!
upstream_ready() { [ "$(http_status "http://127.0.0.1:$UPSTREAM_PORT/healthz")" = 200 ]; }
wait_for "$UPSTREAM_PID" 15 "the demo upstream" upstream_ready || {
  show_log "$LOG_DIR/upstream.log"
  die "the demo upstream exited"
}

# ---- provider -----------------------------------------------------------------

CLIENT_SECRET="$(random_b64 24 | tr '+/' '-_' | tr -d '=')"
COOKIE_SECRET="$(random_b64 32)"

say "starting the test OpenID provider on http://127.0.0.1:$IDP_PORT"
: >"$LOG_DIR/idp.ready"
IDP_HOST=127.0.0.1 IDP_PORT="$IDP_PORT" \
  IDP_CLIENT_ID="$CLIENT_ID" IDP_CLIENT_SECRET="$CLIENT_SECRET" \
  IDP_REDIRECT_URIS="$GATE_URL/sso/authorization-code/callback" \
  IDP_POST_LOGOUT_REDIRECT_URIS="$GATE_URL/sso/logout" \
  IDP_BACKCHANNEL_LOGOUT_URI="$GATE_URL/sso/backchannel-logout" \
  node "$IDP_DIR/server.mjs" >"$LOG_DIR/idp.ready" 2>"$LOG_DIR/idp.log" &
IDP_PID=$!
idp_ready() { [ "$(wc -l <"$LOG_DIR/idp.ready")" -ge 1 ]; }
wait_for "$IDP_PID" 30 "the provider" idp_ready || {
  show_log "$LOG_DIR/idp.log"
  die "the provider exited"
}
ISSUER="$(node -e 'console.log(JSON.parse(process.argv[1]).issuer)' "$(head -n 1 "$LOG_DIR/idp.ready")")" ||
  die "unexpected ready line from the provider (see ${LOG_DIR#"$ROOT"/}/idp.ready)"
TOKEN_ENDPOINT="$(node -e '
  fetch(process.argv[1] + "/.well-known/openid-configuration", { signal: AbortSignal.timeout(5000) })
    .then((r) => r.json())
    .then((d) => console.log(d.token_endpoint))
    .catch((e) => { console.error(String(e)); process.exit(1); });
' "$ISSUER")" || die "could not read the provider's discovery document at $ISSUER"

# ---- gate ---------------------------------------------------------------------

write_env_local
say "starting the gate on $GATE_URL (settings: ${ENV_LOCAL#"$ROOT"/})"
(
  # Only .env.local configures the gate: drop CT_* from the caller's
  # environment, and run where no stray .env is read.
  for name in $(compgen -e); do
    case "$name" in CT_*) unset "$name" ;; esac
  done
  set -a
  # shellcheck source=/dev/null
  . "$ENV_LOCAL"
  set +a
  cd "$HERE"
  exec "$BIN"
) > >(
  trap '' INT # tee outlives Ctrl-C, so the gate's shutdown lines are kept
  exec tee "$LOG_DIR/gate.log"
) 2>&1 &
GATE_PID=$!
gate_ready() { [ "$(http_status "http://127.0.0.1:$GATE_PORT/sso/readyz")" = 200 ]; }
if ! wait_for "$GATE_PID" 60 "the gate" gate_ready; then
  status=0
  wait "$GATE_PID" || status=$?
  GATE_PID=""
  die "the gate exited with status $status (its log: ${LOG_DIR#"$ROOT"/}/gate.log)"
fi

cat <<EOF

  ssogate is running.

    open       $GATE_URL/
    sign in    alice / alice-pass   (or bob / bob-pass), then "Continue" on the consent page
    sign out   the button on the page, or $GATE_URL/sso/logout
    session    $GATE_URL/sso/userinfo

  provider  $ISSUER     (log: ${LOG_DIR#"$ROOT"/}/idp.log)
  upstream  http://127.0.0.1:$UPSTREAM_PORT   (log: ${LOG_DIR#"$ROOT"/}/upstream.log)
  settings  ${ENV_LOCAL#"$ROOT"/}

  Ctrl-C stops all three.

EOF

# Runs until Ctrl-C or until one of the three exits.
while kill -0 "$GATE_PID" 2>/dev/null && kill -0 "$IDP_PID" 2>/dev/null &&
  kill -0 "$UPSTREAM_PID" 2>/dev/null; do
  sleep 1
done
for pair in "gate:$GATE_PID" "provider:$IDP_PID" "demo upstream:$UPSTREAM_PID"; do
  kill -0 "${pair#*:}" 2>/dev/null || echo "run.sh: the ${pair%%:*} exited" >&2
done
exit 1
