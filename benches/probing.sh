#!/usr/bin/env bash
# Probing cost at fleet scale: syncgate against HAProxy, each probing the same N backends once a
# second and doing nothing else (no client traffic). The backends are one nginx answering the
# key-sync readiness report on N distinct loopback addresses (127.0.1.1, 127.0.1.2, …, 250 per
# /24), one `listen` each.
#
#   bash benches/probing.sh [N...] [-- seconds]   (default: 1000 3000 10000, 20 s; installs
#                                                  nginx, haproxy, curl if missing)
#
# syncgate: one pool of N backends, contract key-sync (the default), probe `/ready` every 1 s,
# rise = 1, slow_start = "0s", worker_threads = 1. HAProxy: one backend of N servers,
# `option httpchk GET /ready`, `http-check expect status 200`, `inter 1s`, nbthread 1.
# Each proxy runs alone (one after the other), on a fresh process for each N: it is measured
# once every backend is up (syncgate: `ready` in the admin API; HAProxy: every server UP with
# L7OK in its stats), after a settling pause, over the measured window:
#   CPU µs per probe   user+sys of the process (/proc/PID/stat) / probes in the window
#                      (syncgate: `syncgate_probes_total` from /metrics; HAProxy: N × seconds)
#   % core             that CPU over the window
#   RSS KiB/backend    (RSS with N − RSS with a 1-backend config) / N, at the window's end
#                      (syncgate has rendered /metrics once by then)
#   after scrapes      the same once more after what operators add: syncgate's /metrics again
#                      and /api/backends (the status page polls it every second); HAProxy's
#                      stats page as CSV and HTML
# Then the ratios the issue's targets are stated in (issue 12): syncgate per probe over
# HAProxy's per check at each N, and syncgate's own per probe at each N over it at the first.
# A count whose listen sockets and connections do not fit the descriptor limit is skipped.
# Uses loopback port 18150 on 127.0.1.0-127.0.x.255 and 127.0.0.1:18151 (HAProxy stats).
set -euo pipefail
cd "$(dirname "$0")/.."
COUNTS=()
SECS=20
while [ $# -gt 0 ]; do
  case "$1" in
    --) SECS=${2:?seconds after --}; shift 2 ;;
    *) COUNTS+=("$1"); shift ;;
  esac
done
[ ${#COUNTS[@]} -gt 0 ] || COUNTS=(1000 3000 10000)
SETTLE=5
PORT=18150
STATS_PORT=18151
need=()
for t in nginx haproxy curl; do command -v "$t" >/dev/null || need+=("$t"); done
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
cargo build --release --quiet
ulimit -n "$(ulimit -Hn)"   # nginx holds one listening socket per backend
FDS=$(ulimit -n)
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
tick=$(getconf CLK_TCK)

addr() { echo "127.0.$(($1 / 250 + 1)).$(($1 % 250 + 1))"; }   # backend i, from 0
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
stop() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }
wait_for() { # deadline-seconds, what, command...: polls the command every second
  local deadline=$((SECONDS + $1)) what=$2; shift 2
  until "$@"; do
    if [ $SECONDS -ge $deadline ]; then echo "gave up waiting for $what" >&2; return 1; fi
    sleep 1
  done
}

backends() { # N: one nginx, N loopback addresses
  {
    echo "daemon off; worker_processes 1; pid $work/backend.pid; error_log /dev/null;"
    echo "worker_rlimit_nofile $FDS;"
    echo "events { worker_connections $((FDS - 100)); }"
    echo "http { access_log off; keepalive_requests 1000000;"
    echo "  server {"
    for ((i = 0; i < $1; i++)); do echo "    listen $(addr $i):$PORT;"; done
    echo "    location = /ready { default_type application/json; return 200 '{\"key_sync\":{\"complete\":true,\"generation\":1,\"keys\":1}}'; }"
    echo "    location / { return 200 'ok'; } } }"
  } >"$work/backend.conf"
  nginx -c "$work/backend.conf" &
  BACKEND_PID=$!
  pids+=("$BACKEND_PID")
  wait_for 30 "nginx on $1 addresses" curl -sf -o /dev/null "http://$(addr $(($1 - 1))):$PORT/ready"
}

syncgate_conf() { # N
  {
    printf '[server]\nlisten = ["127.0.0.1:0"]\nworker_threads = 1\n'
    printf '[admin]\nlisten = "127.0.0.1:0"\n'
    printf '[pools.push]\nslow_start = "0s"\n[pools.push.probe]\npath = "/ready"\ninterval = "1s"\nrise = 1\n'
    for ((i = 0; i < $1; i++)); do
      printf '[[pools.push.backends]]\nname = "w%d"\naddr = "%s:%d"\n' "$i" "$(addr $i)" "$PORT"
    done
  } >"$work/syncgate.toml"
}
syncgate_ready() { # admin, N: every backend of the pool ready (/readyz is O(pools) to render)
  curl -sf "http://$1/readyz" | grep -q "\"push\":{\"backends\":$2,\"ready\":$2}"
}
syncgate_probes() { # admin: probes so far, every backend and result
  curl -sf "http://$1/metrics" | awk '/^syncgate_probes_total\{/ {n += $NF} END {printf "%d", n}'
}

haproxy_conf() { # N
  {
    printf 'global\n  nbthread 1\ndefaults\n  mode http\n  timeout connect 2s\n  timeout client 30s\n  timeout server 30s\n  timeout check 2s\n'
    printf 'listen stats\n  bind 127.0.0.1:%d\n  stats enable\n  stats uri /stats\n' "$STATS_PORT"
    printf 'backend workers\n  option httpchk GET /ready\n  http-check expect status 200\n  default-server check inter 1s rise 1\n'
    for ((i = 0; i < $1; i++)); do printf '  server w%d %s:%d\n' "$i" "$(addr $i)" "$PORT"; done
  } >"$work/haproxy.cfg"
}
haproxy_ready() { # N: every server UP after a passing HTTP check
  [ "$(curl -sf "http://127.0.0.1:$STATS_PORT/stats;csv" | awk -F, '$1 == "workers" && $18 == "UP" && $37 ~ /L7OK/' | wc -l)" -eq "$1" ]
}

# Measures one running proxy: "cpu_us_per_probe pct_core rss_kib probes" on stdout. syncgate's
# probes are counted from its metrics when its admin address is given (the rate between two
# scrapes, each timed at its midpoint: rendering the metrics of 10,000 backends takes a while,
# and its CPU stays out of the window), HAProxy's taken as N a second.
measure() { # pid, N, [syncgate admin]
  local pid=$1 n=$2 admin=${3:-} p0 p1 c0 c1 s0 s1 w0 w1 count
  if [ -n "$admin" ]; then
    s0=$(date +%s.%N); p0=$(syncgate_probes "$admin"); s1=$(date +%s.%N)
  fi
  w0=$(date +%s.%N); c0=$(cpu_ticks "$pid")
  sleep "$SECS"
  c1=$(cpu_ticks "$pid"); w1=$(date +%s.%N)
  local rss
  rss=$(rss_kib "$pid")
  if [ -n "$admin" ]; then
    local e0 e1
    e0=$(date +%s.%N); p1=$(syncgate_probes "$admin"); e1=$(date +%s.%N)
    count=$(awk -v p=$((p1 - p0)) -v a="$s0" -v b="$s1" -v c="$e0" -v d="$e1" -v w0="$w0" -v w1="$w1" \
      'BEGIN {printf "%d", p / ((c + d) / 2 - (a + b) / 2) * (w1 - w0)}')
  else
    count=$((n * SECS))
  fi
  awk -v t=$((c1 - c0)) -v hz="$tick" -v n="$count" -v w="$(awk -v a="$w0" -v b="$w1" 'BEGIN {print b - a}')" \
    -v rss="$rss" \
    'BEGIN { printf "%.1f %.1f %d %d\n", (n > 0 ? t / hz * 1e6 / n : 0), t / hz / w * 100, rss, n }'
}

run_syncgate() { # N: sets RES to "cpu pct rss probes"
  syncgate_conf "$1"
  RUST_LOG=info ./target/release/syncgate run --config "$work/syncgate.toml" 2>"$work/syncgate.log" &
  local pid=$!
  pids+=("$pid")
  wait_for 30 "the syncgate admin listener" grep -qs "admin listening" "$work/syncgate.log"
  local admin
  admin=$(grep -o 'admin listening.*' "$work/syncgate.log" | grep -oE '127\.0\.0\.1:[0-9]+' | head -1)
  wait_for 120 "$1 ready syncgate backends" syncgate_ready "$admin" "$1"
  sleep "$SETTLE"
  RES=$(measure "$pid" "$1" "$admin")
  # What an operator's scrapes leave resident: Prometheus once more, the status page's poll.
  curl -sf -o /dev/null "http://$admin/metrics"
  curl -sf -o /dev/null "http://$admin/api/backends"
  RES="$RES $(rss_kib "$pid")"
  stop "$pid"
}
run_haproxy() { # N: sets RES to "cpu pct rss probes"
  haproxy_conf "$1"
  haproxy -f "$work/haproxy.cfg" 2>"$work/haproxy.log" &
  local pid=$!
  pids+=("$pid")
  wait_for 120 "$1 HAProxy servers UP" haproxy_ready "$1"
  sleep "$SETTLE"
  RES=$(measure "$pid" "$1")
  curl -sf -o /dev/null "http://127.0.0.1:$STATS_PORT/stats;csv"
  curl -sf -o /dev/null "http://127.0.0.1:$STATS_PORT/stats"
  RES="$RES $(rss_kib "$pid")"
  stop "$pid"
}

# Baselines: RSS with one backend.
backends 1
run_syncgate 1
read -r _ _ base_sg _ base_sg2 <<<"$RES"
run_haproxy 1
read -r _ _ base_ha _ base_ha2 <<<"$RES"
stop "$BACKEND_PID"
echo "baseline RSS with 1 backend: syncgate ${base_sg} KiB (${base_sg2} after scrapes), HAProxy ${base_ha} KiB (${base_ha2}) ($SECS s windows after ${SETTLE} s settling)"

per_backend() { awk -v r="$1" -v b="$2" -v n="$3" 'BEGIN {printf "%.1f", (r - b) / n}'; }
declare -A sg_cpu ha_cpu
rows=()
for n in "${COUNTS[@]}"; do
  if [ $((n + 500)) -gt "$FDS" ]; then
    echo "N = $n skipped: $n listening sockets do not fit the descriptor limit of $FDS" >&2
    continue
  fi
  backends "$n"
  run_syncgate "$n"
  read -r cpu pct rss probes rss2 <<<"$RES"
  sg_cpu[$n]=$cpu
  rows+=("syncgate $n $cpu $pct $(per_backend "$rss" "$base_sg" "$n") $(per_backend "$rss2" "$base_sg2" "$n") $probes")
  run_haproxy "$n"
  read -r cpu pct rss probes rss2 <<<"$RES"
  ha_cpu[$n]=$cpu
  rows+=("HAProxy $n $cpu $pct $(per_backend "$rss" "$base_ha" "$n") $(per_backend "$rss2" "$base_ha2" "$n") $probes")
  stop "$BACKEND_PID"
done

echo
printf '%-9s %6s %13s %7s %16s %14s %8s\n' proxy N "CPU µs/probe" "% core" "RSS KiB/backend" "after scrapes" probes
for r in "${rows[@]}"; do
  # shellcheck disable=SC2086
  printf '%-9s %6s %13s %7s %16s %14s %8s\n' $r
done
echo
first=""
for n in "${COUNTS[@]}"; do
  [ -n "${sg_cpu[$n]:-}" ] || continue
  awk -v s="${sg_cpu[$n]}" -v h="${ha_cpu[$n]}" -v n="$n" \
    'BEGIN {printf "N = %-6d syncgate/HAProxy per probe: %.2f×\n", n, s / h}'
  if [ -z "$first" ]; then
    first=$n
  else
    awk -v s="${sg_cpu[$n]}" -v f="${sg_cpu[$first]}" -v n="$n" -v m="$first" \
      'BEGIN {printf "syncgate(%d)/syncgate(%d) per probe: %.2f×\n", n, m, s / f}'
  fi
done
echo "targets (issue 12): at 3000, syncgate/HAProxy ≤ 1.5× and syncgate(3000)/syncgate(1000) ≤ 1.25×; RSS ≤ 16 KiB per backend"
