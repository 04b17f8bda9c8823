#!/usr/bin/env bash
# Memory per idle keep-alive client connection: syncgate against nginx and HAProxy, each one
# process with one worker thread. For each proxy and protocol (HTTP/1.1, and HTTP/2 with prior
# knowledge): RSS of the proxy process idle, with N idle connections that each had one
# request answered, and again after they closed. Prints KiB per connection. Each measurement
# starts a fresh proxy process. Access logs are off in every proxy, as in compare.sh.
#
#   bash benches/memory.sh [N...]      (default: 1000 10000; installs nginx, haproxy if missing)
#
# Uses fixed loopback ports 18090-18097 (this is a benchmark, not a test).
set -euo pipefail
cd "$(dirname "$0")/.."
COUNTS=("$@")
[ ${#COUNTS[@]} -gt 0 ] || COUNTS=(1000 10000)
need=()
for t in nginx haproxy curl; do command -v "$t" >/dev/null || need+=("$t"); done
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
cargo build --release --quiet
ulimit -n "$(ulimit -Hn)"   # 10,000 connections need 10,000 descriptors in each process
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

cat >"$work/backend.conf" <<CONF
daemon off; worker_processes 1; pid $work/backend.pid; error_log /dev/null;
events { worker_connections 4096; }
http { access_log off;
  server { listen 127.0.0.1:18090;
    location = /ready { default_type application/json; return 200 '{"key_sync":{"complete":true,"generation":1,"keys":1}}'; }
    location / { return 200 'ok'; } } }
CONF
nginx -c "$work/backend.conf" & pids+=($!)

cat >"$work/nginx.conf" <<CONF
daemon off; worker_processes 1; pid $work/nginx.pid; error_log /dev/null;
worker_rlimit_nofile 20000;
events { worker_connections 19000; }
http { access_log off; keepalive_timeout 600s; keepalive_requests 1000000;
  upstream workers { server 127.0.0.1:18090; keepalive 128; }
  server { listen 127.0.0.1:18091; listen 127.0.0.1:18092 http2;
    location / { proxy_pass http://workers; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
CONF

# HAProxy reserves two descriptors per connection: with a hard limit of 20,000 (this machine)
# it takes at most about 10,000 connections, and is skipped for counts above its maxconn.
haproxy_max=$(( ($(ulimit -n) - 100) / 2 ))
cat >"$work/haproxy.cfg" <<CONF
global
  nbthread 1
  maxconn $haproxy_max
defaults
  mode http
  maxconn $haproxy_max
  timeout connect 2s
  timeout client 600s
  timeout server 30s
  timeout http-keep-alive 600s
  http-reuse always
frontend fe
  bind 127.0.0.1:18093
  bind 127.0.0.1:18094 proto h2
  default_backend workers
backend workers
  server w1 127.0.0.1:18090
CONF

cat >"$work/syncgate.toml" <<CONF
[server]
listen = ["127.0.0.1:18095"]
worker_threads = 1
idle_timeout = "600s"
max_connections = 30000
[server.access_log]
enabled = false
[admin]
listen = "127.0.0.1:0"
[pools.push]
slow_start = "0s"
[pools.push.probe]
interval = "1s"
rise = 1
[[pools.push.backends]]
name = "w1"
addr = "127.0.0.1:18090"
CONF
sleep 1

# Each measurement runs in a fresh proxy process: memory a process freed earlier (another
# protocol's connections) and kept would flatter the next measurement, which reuses it.
launch() { # name, port that must answer 200
  case "$1" in
    nginx) nginx -c "$work/nginx.conf" & ;;
    haproxy) haproxy -f "$work/haproxy.cfg" & ;;
    syncgate) RUST_LOG=warn ./target/release/syncgate run --config "$work/syncgate.toml" & ;;
  esac
  launched=$!
  pids+=("$launched")
  for _ in $(seq 150); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$2/" || true)" = 200 ] && return 0
    sleep 0.1
  done
  echo "$1 never answered 200 on port $2" >&2
  exit 1
}
stop() { kill "$launched"; wait "$launched" 2>/dev/null || true; }

proxy_pid() {
  case "$1" in
    nginx) pgrep -P "$(cat "$work/nginx.pid")" | head -1 ;;
    haproxy) pgrep -f "haproxy -f $work/haproxy.cfg" | head -1 ;;
    syncgate) pgrep -f "syncgate run --config $work/syncgate.toml" | head -1 ;;
  esac
}
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }

printf "%-9s %-5s %7s %11s %11s %11s %9s\n" proxy proto conns "idle MiB" "open MiB" "closed MiB" "KiB/conn"
for count in "${COUNTS[@]}"; do
  for run in nginx:h1:18091:18091 nginx:h2:18092:18091 haproxy:h1:18093:18093 haproxy:h2:18094:18093 syncgate:h1:18095:18095 syncgate:h2:18095:18095; do
    IFS=: read -r name proto port h1port <<<"$run"
    if [ "$name" = haproxy ] && [ "$count" -gt "$haproxy_max" ]; then
      printf "%-9s %-5s %7d   skipped: over its maxconn %d (descriptor limit %d)\n" "$name" "$proto" "$count" "$haproxy_max" "$(ulimit -n)"
      continue
    fi
    launch "$name" "$h1port"
    pid=$(proxy_pid "$name")
    # One round of requests first, so that the idle figure includes the upstream connection.
    python3 benches/idle_clients.py "127.0.0.1:$port" 16 "$proto" </dev/null >/dev/null
    idle=$(rss_kib "$pid")
    fifo="$work/hold"; rm -f "$fifo"; mkfifo "$fifo"
    python3 benches/idle_clients.py "127.0.0.1:$port" "$count" "$proto" <"$fifo" >"$work/out" &
    client=$!
    exec 9>"$fifo"
    for _ in $(seq 600); do grep -q ready "$work/out" 2>/dev/null && break; sleep 0.1; done
    grep -q ready "$work/out" || { echo "$name $proto: the clients never got their answers" >&2; exit 1; }
    sleep 1
    open=$(rss_kib "$pid")
    exec 9>&-
    wait "$client"
    sleep 2
    closed=$(rss_kib "$pid")
    awk -v n="$name" -v p="$proto" -v c="$count" -v i="$idle" -v o="$open" -v z="$closed" 'BEGIN {
      printf "%-9s %-5s %7d %11.1f %11.1f %11.1f %9.1f\n", n, p, c, i / 1024, o / 1024, z / 1024, (o - i) / c }'
    stop
  done
done
