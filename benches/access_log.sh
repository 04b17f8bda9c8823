#!/usr/bin/env bash
# What the access log costs (issue 14): syncgate with its access log off, on to a file on disk,
# and on to stderr sent to /dev/null, measured as benches/compare.sh measures (each proxy pinned
# to core 0, the backend and wrk on core 1, wrk -c64 keep-alive, small GET answers); nginx with
# its access log off and on to a file on the same disk, for reference. Every variant runs once
# per round, back to back, in an order that rotates from round to round; a round's ratios
# (on/off) compare runs seconds apart, so that the load of a shared machine, which drifts over
# minutes, cancels out of them. Prints each run, each variant's median requests/s and CPU µs
# per request, and the median of the rounds' ratios on/off. It waits for every proxy to answer
# 200 before it measures, and any non-2xx answer or socket error during a run marks the whole
# measurement INVALID (exit 1): a proxy answering 503 costs a fraction of a proxied request.
#
#   bash benches/access_log.sh [seconds per run] [rounds] [side-by-side rounds]
#                                               (defaults: 4 s, 15 rounds, 7 rounds)
#
# Uses fixed loopback ports 18090-18098 (this is a benchmark, not a test). The log files go to
# target/access-log-bench/ (the disk, not a tmpfs) and are deleted at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-4}
ROUNDS=${2:-15}
SIDE_ROUNDS=${3:-7}
need=()
for t in nginx wrk curl; do command -v "$t" >/dev/null || need+=("$t"); done
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
cargo build --release --quiet
work=$(mktemp -d)
logs=$PWD/target/access-log-bench
mkdir -p "$logs"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work" "$logs"; }
trap cleanup EXIT

# Backend: nginx answering a tiny body and the key-sync readiness report.
cat >"$work/backend.conf" <<CONF
daemon off; worker_processes 1; pid $work/backend.pid; error_log /dev/null;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:18090;
    location = /ready { default_type application/json; return 200 '{"key_sync":{"complete":true,"generation":1,"keys":1}}'; }
    location / { return 200 'ok'; } } }
CONF
taskset -c 1 nginx -c "$work/backend.conf" & pids+=($!)

# nginx as the proxy, its access log off or on (its default: the combined format, a write(2)
# per request).
nginx_proxy() { # name port access_log
  cat >"$work/$1.conf" <<CONF
daemon off; worker_processes 1; pid $work/$1.pid; error_log /dev/null;
events { worker_connections 4096; }
http { access_log $3; keepalive_requests 1000000;
  upstream workers { server 127.0.0.1:18090; keepalive 128; }
  server { listen 127.0.0.1:$2;
    location / { proxy_pass http://workers; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for; } } }
CONF
  taskset -c 0 nginx -c "$work/$1.conf" & pids+=($!)
}
nginx_proxy nginx-off 18094 off
nginx_proxy nginx-file 18095 "$logs/nginx.log"

# syncgate with its default config but for the access log; stderr (its own log, and the access
# log where path = "-") goes to /dev/null.
syncgate() { # name port admin-port access-log-table
  cat >"$work/$1.toml" <<CONF
[server]
listen = ["127.0.0.1:$2"]
worker_threads = 1
[server.access_log]
$4
[admin]
listen = "127.0.0.1:$3"
[pools.push]
slow_start = "0s"
[pools.push.probe]
interval = "1s"
rise = 1
[[pools.push.backends]]
name = "w1"
addr = "127.0.0.1:18090"
CONF
  RUST_LOG=warn taskset -c 0 ./target/release/syncgate run --config "$work/$1.toml" 2>/dev/null & pids+=($!)
  eval "pid_$(echo "$1" | tr - _)=$!"
}
syncgate sg-off 18091 18096 'enabled = false'
syncgate sg-file 18092 18097 "path = \"$logs/syncgate.log\""
syncgate sg-null 18093 18098 'path = "-"'
# Each proxy answers 200 once its backend is ready (syncgate: after its first probe), within
# 15 s; a run that measured anything else (503s of a proxy without a ready backend cost a
# fraction of a proxied request) would be meaningless.
for p in 18091 18092 18093 18094 18095; do
  deadline=$((SECONDS + 15))
  until [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$p/")" = 200 ]; do
    if [ $SECONDS -ge $deadline ]; then echo "INVALID: the proxy on port $p never answered 200" >&2; exit 1; fi
    sleep 0.1
  done
done
invalid=0
# Marks the run invalid when wrk's output ($2) shows a non-2xx answer or a socket error.
check() { # name output
  if echo "$2" | grep -qE "Non-2xx|Socket errors"; then
    echo "INVALID run of $1: $(echo "$2" | grep -E "Non-2xx|Socket errors" | tr -s ' ')" >&2
    invalid=1
  fi
}

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
tick=$(getconf CLK_TCK)
proxy_pid() {
  case "$1" in
    nginx-*) pgrep -P "$(cat "$work/$1.pid")" | head -1 ;;
    sg-off) echo "$pid_sg_off" ;;
    sg-file) echo "$pid_sg_file" ;;
    sg-null) echo "$pid_sg_null" ;;
  esac
}
declare -A port=([sg-off]=18091 [sg-file]=18092 [sg-null]=18093 [nginx-off]=18094 [nginx-file]=18095)
variants=(sg-off sg-file sg-null nginx-off nginx-file)

for v in "${variants[@]}"; do   # warm-up
  taskset -c 1 wrk -t1 -c64 -d2s "http://127.0.0.1:${port[$v]}/" >/dev/null
done
printf "%-6s %-11s %10s %12s\n" round variant "req/s" "CPU µs/req"
for r in $(seq 1 "$ROUNDS"); do
  n=${#variants[@]}
  for i in $(seq 0 $((n - 1))); do
    v=${variants[$(((i + r) % n))]}
    pid=$(proxy_pid "$v")
    before=$(cpu_ticks "$pid")
    out=$(taskset -c 1 wrk -t1 -c64 -d"${SECS}s" "http://127.0.0.1:${port[$v]}/")
    check "$v" "$out"
    after=$(cpu_ticks "$pid")
    reqs=$(echo "$out" | awk '/requests in/ {print $1}')
    rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
    cpu=$(awk -v t=$((after - before)) -v hz="$tick" -v n="$reqs" 'BEGIN {printf "%.2f", t / hz * 1e6 / n}')
    printf "%-6s %-11s %10s %12s\n" "$r" "$v" "$rps" "$cpu"
    echo "$rps" >>"$work/$v.rps"
    echo "$cpu" >>"$work/$v.cpu"
    declare "rps_${v//-/_}=$rps" "cpu_${v//-/_}=$cpu"
  done
  # This round's ratios on/off.
  for pair in sg-file:sg-off sg-null:sg-off nginx-file:nginx-off; do
    on=${pair%%:*} off=${pair##*:}
    rps_on=rps_${on//-/_} rps_off=rps_${off//-/_} cpu_on=cpu_${on//-/_} cpu_off=cpu_${off//-/_}
    awk -v a="${!rps_on}" -v b="${!rps_off}" 'BEGIN {print a / b}' >>"$work/$on.rps-ratio"
    awk -v a="${!cpu_on}" -v b="${!cpu_off}" 'BEGIN {print a / b}' >>"$work/$on.cpu-ratio"
  done
done

median() { sort -n "$1" | awk '{a[NR] = $1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }
echo
printf "%-11s %12s %14s\n" variant "median req/s" "median CPU µs"
for v in "${variants[@]}"; do
  printf "%-11s %12s %14s\n" "$v" "$(median "$work/$v.rps")" "$(median "$work/$v.cpu")"
done
echo
echo "median of the rounds' ratios (on/off):"
for pair in sg-file:sg-off sg-null:sg-off nginx-file:nginx-off; do
  on=${pair%%:*}
  printf "%-22s throughput %.3f  CPU per request %.3f\n" "${pair/:/\/}" \
    "$(median "$work/$on.rps-ratio")" "$(median "$work/$on.cpu-ratio")"
done
# Side by side: syncgate with the log off and with it on to /dev/null, both pinned to core 0,
# loaded at once from core 1, so that whatever else the machine does slows both alike (two
# identical instances measure 1.00 ± 0.01 this way). The two share core 0's caches, which
# weighs on the variant that touches more memory: a stricter measure than the rounds above.
echo
echo "side by side (sg-null and sg-off loaded at once), CPU per request on/off:"
for r in $(seq 1 "$SIDE_ROUNDS"); do
  a0=$(cpu_ticks "$pid_sg_off") b0=$(cpu_ticks "$pid_sg_null")
  taskset -c 1 wrk -t1 -c64 -d"${SECS}s" "http://127.0.0.1:${port[sg-off]}/" >"$work/side-off.txt" &
  w1=$!
  taskset -c 1 wrk -t1 -c64 -d"${SECS}s" "http://127.0.0.1:${port[sg-null]}/" >"$work/side-null.txt" &
  w2=$!
  wait "$w1" "$w2"
  a1=$(cpu_ticks "$pid_sg_off") b1=$(cpu_ticks "$pid_sg_null")
  check sg-off "$(cat "$work/side-off.txt")"
  check sg-null "$(cat "$work/side-null.txt")"
  n_off=$(awk '/requests in/ {print $1}' "$work/side-off.txt")
  n_null=$(awk '/requests in/ {print $1}' "$work/side-null.txt")
  awk -v a=$((a1 - a0)) -v b=$((b1 - b0)) -v x="$n_off" -v y="$n_null" \
    'BEGIN {printf "%.3f\n", (b / y) / (a / x)}' | tee -a "$work/side.ratio"
done
printf "median side by side: %.3f\n" "$(median "$work/side.ratio")"
dropped=$(curl -s http://127.0.0.1:18097/metrics | awk '$1 == "syncgate_access_log_dropped_total" {print $2}')
echo "sg-file: $(wc -l <"$logs/syncgate.log") lines in its file, ${dropped:-?} dropped"
if [ "$invalid" -ne 0 ]; then echo "INVALID: some run had errors or non-2xx answers (see above)"; exit 1; fi
