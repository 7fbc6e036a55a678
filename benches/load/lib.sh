# Shared by benches/load/run.sh and benches/load/websockets.sh (sourced, bash).
# Starts the pieces on free loopback ports, remembers every process it starts
# and stops them all on exit.

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$BENCH_DIR/../.." && pwd)"
CLIENT_ID="ssogate-bench"
CLIENT_SECRET="bench-client-secret-$(head -c 9 /dev/urandom | od -An -tx1 | tr -d ' \n')"
IDP_HOST="127.0.0.2" # its own loopback address: its cookies never mix with the gates'
PIDS=()
WORK=""

say() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }
die() { say "error: $*"; exit 1; }

cleanup() {
  local rc=$?
  local pid
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
    pid=${PIDS[i]}
    kill -TERM "$pid" 2>/dev/null || true
  done
  local deadline=$((SECONDS + 8))
  for pid in "${PIDS[@]}"; do
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  if [[ -n "$WORK" && -d "$WORK" ]]; then
    if ((rc == 0)) && [[ -z "${BENCH_KEEP:-}" ]]; then
      rm -rf "$WORK"
    else
      say "logs and configs kept in $WORK"
    fi
  fi
  exit "$rc"
}

setup_work() {
  trap cleanup EXIT
  trap 'exit 130' INT TERM
  WORK="$(mktemp -d /tmp/ssogate-bench.XXXXXX)"
  chmod 755 "$WORK"
  ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
}

# Records a started process for cleanup.
track() { PIDS+=("$1"); }

# Installs nginx, Apache with mod_auth_openidc and wrk when missing, without
# letting the packages start their system services.
ensure_packages() {
  local need=()
  command -v nginx >/dev/null 2>&1 || need+=(nginx)
  [[ -x /usr/sbin/apache2 ]] || need+=(apache2)
  [[ -f /usr/lib/apache2/modules/mod_auth_openidc.so ]] || need+=(libapache2-mod-auth-openidc)
  command -v wrk >/dev/null 2>&1 || need+=(wrk)
  for m in "$@"; do command -v "$m" >/dev/null 2>&1 || need+=("$m"); done
  ((${#need[@]} == 0)) && return 0
  say "installing ${need[*]}"
  local policy=/usr/sbin/policy-rc.d made_policy=""
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && made_policy=1
  fi
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >"$WORK/apt.log" 2>&1 ||
    { [[ -n $made_policy ]] && rm -f "$policy"; cat "$WORK/apt.log" >&2; die "apt-get install ${need[*]} failed"; }
  [[ -n $made_policy ]] && rm -f "$policy"
  return 0
}

ensure_node_modules() {
  local dir="$REPO/tests/idp"
  if [[ ! -d "$dir/node_modules/oidc-provider" ]]; then
    say "npm ci in tests/idp"
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error) >&2 || die "npm ci in tests/idp failed"
  fi
}

build_gate() {
  say "cargo build --release --locked"
  (cd "$REPO" && cargo build --release --locked) >"$WORK/cargo-build.log" 2>&1 ||
    { tail -30 "$WORK/cargo-build.log" >&2; die "cargo build --release --locked failed"; }
  GATE_BIN="$REPO/target/release/ssogate"
  [[ -x $GATE_BIN ]] || die "no $GATE_BIN"
}

# An unstripped release build (symbols for perf and callgrind) in
# target/bench-profile: GATE_BIN.
build_profile_gate() {
  say "building an unstripped release binary in target/bench-profile"
  (cd "$REPO" && CARGO_PROFILE_RELEASE_STRIP=false CARGO_PROFILE_RELEASE_DEBUG=line-tables-only \
    cargo build --release --locked --target-dir target/bench-profile) >"$WORK/cargo-profile.log" 2>&1 ||
    { tail -20 "$WORK/cargo-profile.log" >&2; die "profile build failed"; }
  GATE_BIN="$REPO/target/bench-profile/release/ssogate"
}

# The WebSocket helper (benches/load/wstool, its own workspace): WSTOOL.
build_wstool() {
  say "cargo build --release --locked (benches/load/wstool)"
  cargo build --release --locked --manifest-path "$BENCH_DIR/wstool/Cargo.toml" >"$WORK/wstool-build.log" 2>&1 ||
    { tail -30 "$WORK/wstool-build.log" >&2; die "building wstool failed"; }
  WSTOOL="$BENCH_DIR/wstool/target/release/wstool"
}

# start_wstool_echo PORT: the WebSocket echo upstream (2 threads) -> ECHO_PID.
start_wstool_echo() {
  (WSTOOL_THREADS=2 exec "$WSTOOL" echo "127.0.0.1:$1" </dev/null >"$WORK/echo.out" 2>"$WORK/echo.log") &
  ECHO_PID=$!
  track "$ECHO_PID"
  wait_http "http://127.0.0.1:$1/" 200 10
}

# gate_binaries BIN...: the gates to measure, as absolute paths (they run in
# $WORK), in BINS.
gate_binaries() {
  BINS=()
  for b in "$@"; do
    [[ -x $b ]] || die "$b is not an executable"
    BINS+=("$(realpath "$b")")
  done
}

# start_for_gates N: the upstream (UP_PORT) and the provider, with N free
# ports for gates (PORTS) registered as its redirect URIs.
start_for_gates() {
  read -r UP_PORT < <(free_ports 1)
  start_upstream "$UP_PORT"
  mapfile -t PORTS < <(free_ports "$1" | tr ' ' '\n')
  local callbacks
  callbacks=$(printf 'http://127.0.0.1:%s/sso/authorization-code/callback,' "${PORTS[@]}")
  start_idp "${callbacks%,}" "http://127.0.0.1:${PORTS[0]}/sso/logout"
}

# free_ports N: N distinct free ports on 127.0.0.1, space-separated.
free_ports() {
  node -e '
    const net = require("node:net");
    const n = Number(process.argv[1]);
    const servers = [];
    (async () => {
      const ports = [];
      for (let i = 0; i < n; i++) {
        const s = net.createServer();
        await new Promise((r) => s.listen(0, "127.0.0.1", r));
        servers.push(s);
        ports.push(s.address().port);
      }
      for (const s of servers) s.close();
      console.log(ports.join(" "));
    })();' "$1"
}

# wait_http URL STATUS SECONDS
wait_http() {
  local url=$1 want=$2 secs=$3 got
  local deadline=$((SECONDS + secs))
  while ((SECONDS <= deadline)); do
    got=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$url" 2>/dev/null || true)
    [[ $got == "$want" ]] && return 0
    sleep 0.05
  done
  die "$url did not answer $want within ${secs}s (last: $got)"
}

# nginx_conf DIR LISTEN_PORT WORKERS BODY: writes DIR/nginx.conf with the
# server block BODY (inside http { }).
nginx_conf() {
  local dir=$1 workers=$2 body=$3
  mkdir -p "$dir/tmp"
  chmod 755 "$dir" "$dir/tmp"
  cat >"$dir/nginx.conf" <<EOF
worker_processes $workers;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
worker_rlimit_nofile $(ulimit -Hn);
events { worker_connections 16384; }
http {
  access_log off;
  default_type text/plain;
  sendfile on;
  keepalive_timeout 300s;
  keepalive_requests 1000000000;
  client_body_temp_path $dir/tmp/body;
  proxy_temp_path $dir/tmp/proxy;
  fastcgi_temp_path $dir/tmp/fastcgi;
  uwsgi_temp_path $dir/tmp/uwsgi;
  scgi_temp_path $dir/tmp/scgi;
$body
}
EOF
}

start_nginx() { # DIR -> sets NGINX_PID
  local dir=$1
  nginx -t -q -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" 2>"$dir/test.log" ||
    { cat "$dir/test.log" >&2; die "nginx config $dir/nginx.conf is invalid"; }
  nginx -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" -g 'daemon off;' </dev/null >"$dir/stdout.log" 2>&1 &
  NGINX_PID=$!
  track "$NGINX_PID"
}

# The one cheap upstream: nginx, "ok\n" at any path, a 64 KiB file at
# /static/64k.bin; HTTP/1.1 on PORT and, when H2C_PORT is given, the same
# over cleartext HTTP/2 (prior knowledge) on H2C_PORT.
start_upstream() { # PORT [H2C_PORT]
  local port=$1 h2c=${2:-} dir="$WORK/upstream"
  mkdir -p "$dir/www/static"
  head -c 65536 /dev/zero | tr '\0' 'x' >"$dir/www/static/64k.bin"
  chmod -R a+rX "$dir"
  nginx_conf "$dir" auto "  server {
    listen 127.0.0.1:$port backlog=4096;${h2c:+
    listen 127.0.0.1:$h2c http2 backlog=4096;
    http2_max_concurrent_streams 1024;}
    # nginx_same's requests reach it with the gate's 1.3 KB cookie, which the
    # 1 KiB default would read twice (two more system calls a request).
    client_header_buffer_size 4k;
    location / { return 200 \"ok\\n\"; }
    location /static/ { root $dir/www; }
  }"
  start_nginx "$dir"
  UPSTREAM_PID=$NGINX_PID
  wait_http "http://127.0.0.1:$port/hello" 200 10
}

# nginx as a plain reverse proxy (no authentication), WebSocket-capable.
# HEADER_BUFFER is its client_header_buffer_size: nginx's default, 1k, unless
# given (websockets.sh sends nginx no cookie, and an upgraded connection keeps
# that buffer for its life). NAME (nginx-proxy) names its directory under
# $WORK; LISTEN_OPTS are more parameters of its listen directive (run.sh's
# second proxy gives "reuseport").
start_proxy() { # PORT UPSTREAM_PORT [HEADER_BUFFER] [NAME] [LISTEN_OPTS]
  local dir="$WORK/${4:-nginx-proxy}"
  mkdir -p "$dir"
  nginx_conf "$dir" 2 "$UPGRADE_MAP
$(proxy_block "$1" "$2" "${3:-1k}" "${5:-}")"
  start_nginx "$dir"
  PROXY_PID=$NGINX_PID
}

# What proxy_block's Connection header needs, once per configuration.
UPGRADE_MAP="  map \$http_upgrade \$connection_upgrade { default upgrade; '' ''; }"

# proxy_block PORT UPSTREAM_PORT HEADER_BUFFER [LISTEN_OPTS]: the upstream
# and server blocks of the plain proxy on PORT (its upstream block is named
# up_PORT, so several fit in one configuration).
proxy_block() {
  local port=$1 up=$2 header_buffer=$3 listen_opts=${4:-}
  cat <<EOF
  upstream up_$port {
    server 127.0.0.1:$up;
    keepalive 256;
    keepalive_requests 1000000000;
    keepalive_timeout 300s;
  }
  server {
    listen 127.0.0.1:$port backlog=4096${listen_opts:+ $listen_opts};
    # run.sh gives 4k: with the 1 KiB default nginx reads a request that
    # carries the gate's 1.3 KB cookie twice (two more system calls a request).
    client_header_buffer_size $header_buffer;
    location / {
      proxy_pass http://up_$port;
      proxy_http_version 1.1;
      proxy_set_header Host \$host;
      proxy_set_header Upgrade \$http_upgrade;
      proxy_set_header Connection \$connection_upgrade;
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto \$scheme;
      proxy_read_timeout 3600s;
      proxy_send_timeout 3600s;
      # Room for a 64 KiB response in memory (the defaults, 8 x 4 KiB, spill it
      # to a temporary file), and 16 KiB reads on upgraded connections.
      proxy_buffer_size 16k;
      proxy_buffers 8 16k;
    }
  }
EOF
}

# The pinned test provider on $IDP_HOST. start_idp REDIRECT_URIS POST_LOGOUT_URIS
start_idp() {
  ensure_node_modules
  local port
  port=$(free_ports 1)
  (
    cd "$REPO/tests/idp" &&
      exec env IDP_PORT="$port" IDP_HOST="$IDP_HOST" IDP_CLIENT_ID="$CLIENT_ID" IDP_CLIENT_SECRET="$CLIENT_SECRET" \
        IDP_REDIRECT_URIS="$1" IDP_POST_LOGOUT_REDIRECT_URIS="$2" IDP_WATCH_STDIN=0 \
        node server.mjs </dev/null >"$WORK/idp.out" 2>"$WORK/idp.log"
  ) &
  IDP_PID=$!
  track "$IDP_PID"
  local deadline=$((SECONDS + 60))
  until [[ -s "$WORK/idp.out" ]]; do
    kill -0 "$IDP_PID" 2>/dev/null || { cat "$WORK/idp.log" >&2; die "the provider exited"; }
    ((SECONDS < deadline)) || die "the provider printed no ready line within 60s"
    sleep 0.1
  done
  ISSUER=$(node -e 'console.log(JSON.parse(require("fs").readFileSync(process.argv[1],"utf8").split("\n")[0]).issuer)' "$WORK/idp.out")
  say "provider $ISSUER (node tests/idp/server.mjs)"
}

COOKIE_SECRET="$(head -c 32 /dev/urandom | base64)"

# The gate's environment in GATE_ENVS (no inherited CT_* and no .env: it
# runs in $WORK). gate_envs PORT UPSTREAM_PORT RUST_LOG
gate_envs() {
  GATE_ENVS=(PATH="$PATH" HOME="$HOME"
    CT_SERVER_URL="http://127.0.0.1:$1" CT_LISTEN_ADDR="127.0.0.1:$1"
    CT_UPSTREAM_URL="http://127.0.0.1:$2"
    CT_SSO_AUTHORIZATION_ENDPT="$ISSUER" CT_SSO_CLIENT_ID="$CLIENT_ID" CT_SSO_CLIENT_SECRET="$CLIENT_SECRET"
    CT_COOKIE_SECRET="$COOKIE_SECRET" CT_SSO_SCOPES="openid profile email offline_access"
    CT_SHUTDOWN_GRACE=2s CT_MAX_CONNECTIONS=30000 RUST_LOG="$3")
  # BENCH_GATE_ENV="CT_WORKER_THREADS=1 …": more settings for every gate.
  if [[ -n ${BENCH_GATE_ENV:-} ]]; then
    local extra
    read -r -a extra <<<"$BENCH_GATE_ENV"
    GATE_ENVS+=("${extra[@]}")
  fi
}

start_gate() { # PORT UPSTREAM_PORT RUST_LOG LOGFILE -> GATE_PID
  gate_envs "$1" "$2" "$3"
  (cd "$WORK" && exec env -i "${GATE_ENVS[@]}" "$GATE_BIN" </dev/null >"$4" 2>&1) &
  GATE_PID=$!
  track "$GATE_PID"
  wait_http "http://127.0.0.1:$1/sso/readyz" 200 30
}

# signin_session START_URL: the Cookie header after a scripted browser sign-in.
signin_session() {
  node "$BENCH_DIR/signin.mjs" session "$1" alice alice-pass || die "sign-in via $1 failed"
}

# signin_token PORT: an ID token for the gate on PORT (authorization code
# flow with its callback as the redirect URI), to send as a bearer token.
signin_token() {
  node "$BENCH_DIR/signin.mjs" idtoken "$ISSUER" "$CLIENT_ID" "$CLIENT_SECRET" \
    "http://127.0.0.1:$1/sso/authorization-code/callback" || die "no ID token"
}

# Apache httpd (mpm_event) with mod_auth_openidc in front of the upstream,
# sessions in the shared-memory cache. start_apache PORT UPSTREAM_PORT
# [PROXY_PARAMS]: PROXY_PARAMS are more parameters of its ProxyPass
# (websockets.sh gives "upgrade=websocket": mod_proxy_http then tunnels a
# WebSocket upgrade, Apache 2.4.47 and later).
start_apache() {
  local port=$1 up=$2 proxy_params=${3:-} dir="$WORK/apache" mods=/usr/lib/apache2/modules
  mkdir -p "$dir/run"
  chmod 755 "$dir"
  chmod 777 "$dir/run"
  cat >"$dir/httpd.conf" <<EOF2
ServerRoot $dir
ServerName 127.0.0.1
Listen 127.0.0.1:$port
PidFile $dir/httpd.pid
DefaultRuntimeDir $dir/run
ErrorLog $dir/error.log
LogLevel warn
User www-data
Group www-data

LoadModule mpm_event_module $mods/mod_mpm_event.so
LoadModule authn_core_module $mods/mod_authn_core.so
LoadModule authz_core_module $mods/mod_authz_core.so
LoadModule authz_user_module $mods/mod_authz_user.so
LoadModule proxy_module $mods/mod_proxy.so
LoadModule proxy_http_module $mods/mod_proxy_http.so
LoadModule auth_openidc_module $mods/mod_auth_openidc.so

# Two processes (the machine's cores) of 64 threads, never reaped or added.
StartServers 2
ServerLimit 2
ThreadLimit 64
ThreadsPerChild 64
MaxRequestWorkers 128
MinSpareThreads 64
MaxSpareThreads 128
MaxConnectionsPerChild 0
ListenBacklog 4096

KeepAlive On
MaxKeepAliveRequests 0
KeepAliveTimeout 300

OIDCProviderMetadataURL $ISSUER/.well-known/openid-configuration
OIDCClientID $CLIENT_ID
OIDCClientSecret $CLIENT_SECRET
OIDCProviderTokenEndpointAuth client_secret_basic
OIDCRedirectURI http://127.0.0.1:$port/redirect_uri
OIDCCryptoPassphrase $(head -c 24 /dev/urandom | base64)
OIDCScope "openid profile email"
OIDCPKCEMethod S256
OIDCCacheType shm
OIDCSessionType server-cache
OIDCSessionInactivityTimeout 3600

<Location />
  AuthType openid-connect
  Require valid-user
</Location>
ProxyPass /redirect_uri !
ProxyPass / http://127.0.0.1:$up/${proxy_params:+ $proxy_params}
ProxyPassReverse / http://127.0.0.1:$up/
EOF2
  /usr/sbin/apache2 -t -f "$dir/httpd.conf" >"$dir/test.log" 2>&1 ||
    { cat "$dir/test.log" >&2; die "Apache config $dir/httpd.conf is invalid"; }
  /usr/sbin/apache2 -f "$dir/httpd.conf" -DFOREGROUND </dev/null >"$dir/stdout.log" 2>&1 &
  APACHE_PID=$!
  track "$APACHE_PID"
  local deadline=$((SECONDS + 20)) got
  while ((SECONDS <= deadline)); do
    got=$(curl -s -o /dev/null -w '%{http_code}' -H 'Accept: text/html' --max-time 2 "http://127.0.0.1:$port/hello" || true)
    [[ $got == 302 ]] && return 0
    kill -0 "$APACHE_PID" 2>/dev/null || { cat "$dir/error.log" "$dir/stdout.log" >&2; die "Apache exited"; }
    sleep 0.1
  done
  cat "$dir/error.log" >&2
  die "Apache + mod_auth_openidc did not redirect to sign-in within 20s (last: $got)"
}
