#!/usr/bin/env bash
# CPU cost per request of syncgate against nginx and HAProxy as reverse proxies, the way
# DESIGN.md's performance notes measure it: each proxy pinned to core 0, the backend and wrk
# on core 1, wrk -c64 keep-alive, small GET answers. Prints requests/s, latency, and CPU µs
# per request (user+sys of the proxy process over the run), and each proxy's ratio to nginx.
# Access logs are off in every proxy (nginx's access_log off, syncgate's [server.access_log]
# enabled = false); benches/access_log.sh measures what they cost.
#
#   bash benches/compare.sh [seconds]      (default 10; installs nginx, haproxy, wrk if missing)
#
# Uses fixed loopback ports 18080-18083 (this is a benchmark, not a test).
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-10}
need=()
for t in nginx haproxy wrk; do command -v "$t" >/dev/null || need+=("$t"); done
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
cargo build --release --quiet
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

# Backend: nginx answering a tiny body and the key-sync readiness report.
cat >"$work/backend.conf" <<CONF
daemon off; worker_processes 1; pid $work/backend.pid; error_log /dev/null;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:18080;
    location = /ready { default_type application/json; return 200 '{"key_sync":{"complete":true,"generation":1,"keys":1}}'; }
    location / { return 200 'ok'; } } }
CONF
taskset -c 1 nginx -c "$work/backend.conf" & pids+=($!)

cat >"$work/nginx.conf" <<CONF
daemon off; worker_processes 1; pid $work/nginx.pid; error_log /dev/null;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  upstream workers { server 127.0.0.1:18080; keepalive 128; }
  server { listen 127.0.0.1:18081;
    location / { proxy_pass http://workers; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for; } } }
CONF
taskset -c 0 nginx -c "$work/nginx.conf" & pids+=($!)

cat >"$work/haproxy.cfg" <<CONF
global
  nbthread 1
defaults
  mode http
  timeout connect 2s
  timeout client 30s
  timeout server 30s
  option forwardfor
  http-reuse always
frontend fe
  bind 127.0.0.1:18082
  default_backend workers
backend workers
  server w1 127.0.0.1:18080
CONF
taskset -c 0 haproxy -f "$work/haproxy.cfg" & pids+=($!)

cat >"$work/syncgate.toml" <<CONF
[server]
listen = ["127.0.0.1:18083"]
worker_threads = 1
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
addr = "127.0.0.1:18080"
CONF
RUST_LOG=warn taskset -c 0 ./target/release/syncgate run --config "$work/syncgate.toml" & pids+=($!)
sleep 2

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
tick=$(getconf CLK_TCK)
# The proxy's worker process: nginx's child, haproxy's and syncgate's own pid.
proxy_pid() {
  case "$1" in
    nginx) pgrep -P "$(cat "$work/nginx.pid")" | head -1 ;;
    haproxy) pgrep -f "haproxy -f $work/haproxy.cfg" | head -1 ;;
    syncgate) pgrep -f "syncgate run --config $work/syncgate.toml" | head -1 ;;
  esac
}

declare -A us
printf "%-9s %10s %9s %9s %12s\n" proxy "req/s" p50 p99 "CPU µs/req"
for run in nginx:18081 haproxy:18082 syncgate:18083; do
  name=${run%%:*}; port=${run##*:}
  pid=$(proxy_pid "$name")
  taskset -c 1 wrk -t1 -c64 -d2s "http://127.0.0.1:$port/" >/dev/null   # warm-up
  before=$(cpu_ticks "$pid")
  out=$(taskset -c 1 wrk -t1 -c64 -d"${SECS}s" --latency "http://127.0.0.1:$port/")
  after=$(cpu_ticks "$pid")
  reqs=$(echo "$out" | awk '/requests in/ {print $1}')
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  p50=$(echo "$out" | awk '$1=="50%" {print $2}')
  p99=$(echo "$out" | awk '$1=="99%" {print $2}')
  cpu=$(awk -v t=$((after - before)) -v hz="$tick" -v n="$reqs" 'BEGIN {printf "%.1f", t / hz * 1e6 / n}')
  us[$name]=$cpu
  printf "%-9s %10s %9s %9s %12s\n" "$name" "$rps" "$p50" "$p99" "$cpu"
done
for name in haproxy syncgate; do
  awk -v a="${us[$name]}" -v b="${us[nginx]}" -v n="$name" 'BEGIN {printf "%s CPU per request: %.2fx nginx\n", n, a / b}'
done
