#!/usr/bin/env bash
# syncgate against nginx and HAProxy as reverse proxies, side by side in one run (figures
# from different runs of this machine move by ±15%: compare ratios within one run).
# Access logs are off in every proxy (nginx's access_log off, syncgate's [server.access_log]
# enabled = false); benches/access_log.sh measures what they cost.
#
#   bash benches/compare.sh [seconds] [rounds]   (default 6 s, 7 rounds; installs nginx,
#                                                 haproxy, wrk and h2load if missing)
#
# Sections, each proxy measured once per round, in an order that rotates from round to round
# (medians reported, and the median of the rounds' own ratios; see "ratios" at the end):
#   pinned     each proxy on core 0 with one worker (syncgate worker_threads = 1), the backend
#              and wrk -t1 -c64 keep-alive on core 1: req/s, p50/p99/p99.9, CPU µs per request
#              (user+sys of the proxy process over the run), peak RSS. Beside them the floor
#              (examples/floor.rs): about the least a hyper 1.x proxy does per request, one
#              upstream connection per client connection and nothing but forwarding; and
#              floor_mt, the same with one more thread that stays parked (syncgate's process
#              always has more than one, and there every syscall on a socket pays more).
#   same       the pinned placement again, with nginx and HAProxy configured to write the
#              forwarding headers syncgate writes by default (the client's Host,
#              X-Forwarded-Host and -Proto, an X-Request-ID upstream and back to the client):
#              the same work, as an operator who needs those headers would configure them.
#   unpinned   every proxy with one worker per core (worker_threads = 0, nginx worker_processes
#              auto, HAProxy nbthread = cores), nothing pinned, wrk -t2 -c128.
#   rate       one fixed rate for all, half the highest pinned maximum of the three proxies, so
#              that each is at least at half its own capacity and the client and the backend
#              on core 1 carry the same load in every run (examples/rate.rs, a client with
#              latency correction, so a stall counts for every request it delayed, and
#              without a pause of its own; oha until stop 31): p50/p95/p99/p99.9 and the worst
#              run's p99, and in how many rounds syncgate's p99 was above each proxy's; the
#              floor too, and the backend alone (no proxy: what the client and the machine add
#              by themselves). RATE_ROUNDS rounds (default 2 x rounds + 1) of RATE_SECS
#              seconds (default 5).
#   h2         HTTP/2 clients over cleartext (h2load -c16 -m10), pinned like the first.
# syncgate runs with its guard (default [401, 403]) and key-sync readiness on. Any non-2xx
# answer or socket error marks a run INVALID. Uses loopback ports 18072-18089.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-6}
ROUNDS=${2:-7}
RATE_SECS=${RATE_SECS:-5}
RATE_ROUNDS=${RATE_ROUNDS:-$((2 * ROUNDS + 1))}
CORES=$(nproc)
need=()
for t in nginx haproxy wrk h2load curl; do command -v "$t" >/dev/null || need+=("$t"); done
if [ ${#need[@]} -gt 0 ]; then
  need=("${need[@]/h2load/nghttp2-client}")
  apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
# Two builds: an example built with the binary would turn on the dev-dependencies' features
# for the whole build, and the syncgate measured would not be the one `cargo build` makes.
cargo build --release --quiet --bin syncgate
cargo build --release --quiet --example floor --example rate
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

backend() { # port, worker_processes
  cat >"$work/backend-$1.conf" <<CONF
daemon off; worker_processes $2; pid $work/backend-$1.pid; error_log /dev/null;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:$1;
    location = /ready { default_type application/json; return 200 '{"key_sync":{"complete":true,"generation":1,"keys":1}}'; }
    location / { return 200 'ok'; } } }
CONF
  echo "$work/backend-$1.conf"
}
# The forwarding headers syncgate writes and nginx's and HAProxy's defaults do not: the client's
# Host, X-Forwarded-Host and -Proto, and an X-Request-ID generated when the client sent none,
# sent upstream and returned to the client.
NGINX_SAME='proxy_set_header Host $http_host; proxy_set_header X-Forwarded-Host $http_host;
      proxy_set_header X-Forwarded-Proto $scheme; proxy_set_header X-Request-ID $sg_request_id;
      add_header X-Request-ID $sg_request_id always;'
HAPROXY_SAME='  unique-id-format %[uuid()]
  unique-id-header X-Request-ID
  http-request set-header X-Forwarded-Proto http
  http-request set-header X-Forwarded-Host %[req.hdr(host)]
  http-after-response set-header X-Request-ID %[unique-id]'
nginx_proxy() { # name, port, h2 port, backend port, workers[, extra location directives]
  cat >"$work/$1.conf" <<CONF
daemon off; worker_processes $5; pid $work/$1.pid; error_log /dev/null;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  map \$http_x_request_id \$sg_request_id { "" \$request_id; default \$http_x_request_id; }
  upstream workers { server 127.0.0.1:$4; keepalive 128; }
  server { listen 127.0.0.1:$2; listen 127.0.0.1:$3 http2;
    location / { proxy_pass http://workers; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for; ${6:-} } } }
CONF
  echo "$work/$1.conf"
}
haproxy_proxy() { # name, port, h2 port, backend port, threads[, extra frontend lines]
  cat >"$work/$1.cfg" <<CONF
global
  nbthread $5
defaults
  mode http
  timeout connect 2s
  timeout client 30s
  timeout server 30s
  option forwardfor
  http-reuse always
frontend fe
  bind 127.0.0.1:$2
  bind 127.0.0.1:$3 proto h2
${6:-}
  default_backend workers
backend workers
  server w1 127.0.0.1:$4
CONF
  echo "$work/$1.cfg"
}
syncgate_proxy() { # name, port, backend port, threads
  cat >"$work/$1.toml" <<CONF
[server]
listen = ["127.0.0.1:$2"]
worker_threads = $4
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
addr = "127.0.0.1:$3"
CONF
  echo "$work/$1.toml"
}

# Pinned: backend on core 1, proxies on core 0. Unpinned: their own backend, all cores.
taskset -c 1 nginx -c "$(backend 18080 1)" & pids+=($!)
nginx -c "$(backend 18084 auto)" & pids+=($!)
taskset -c 0 nginx -c "$(nginx_proxy nginx-pinned 18081 18085 18080 1)" & pids+=($!)
taskset -c 0 haproxy -f "$(haproxy_proxy haproxy-pinned 18082 18086 18080 1)" & pids+=($!)
taskset -c 0 nginx -c "$(nginx_proxy nginx-same 18073 18075 18080 1 "$NGINX_SAME")" & pids+=($!)
taskset -c 0 haproxy -f "$(haproxy_proxy haproxy-same 18074 18076 18080 1 "$HAPROXY_SAME")" & pids+=($!)
RUST_LOG=warn taskset -c 0 ./target/release/syncgate run --config "$(syncgate_proxy syncgate-pinned 18083 18080 1)" & pids+=($!)
nginx -c "$(nginx_proxy nginx-all 18087 18077 18084 auto)" & pids+=($!)
haproxy -f "$(haproxy_proxy haproxy-all 18088 18078 18084 "$CORES")" & pids+=($!)
RUST_LOG=warn ./target/release/syncgate run --config "$(syncgate_proxy syncgate-all 18089 18084 0)" & pids+=($!)
# The floors print an error for each connection a client cut mid-request (wrk does at the end
# of a run): not worth a line. taskset execs the floor: $! is the floor's pid.
taskset -c 0 ./target/release/examples/floor 127.0.0.1:18079 127.0.0.1:18080 2>/dev/null & pids+=($!)
floor_pid=$!
taskset -c 0 ./target/release/examples/floor 127.0.0.1:18072 127.0.0.1:18080 --idle-thread 2>/dev/null & pids+=($!)
floor_mt_pid=$!
sleep 2

# The "same" proxies must answer with a request id, as syncgate does.
for port in 18073 18074 18083; do
  if ! curl -sfi "http://127.0.0.1:$port/" | grep -qi '^x-request-id: .'; then
    echo "INVALID: the proxy on port $port answers without X-Request-ID" >&2; exit 1
  fi
done
# The floors started here run (not an earlier one on their port) and answer.
if ! kill -0 "$floor_pid" "$floor_mt_pid" 2>/dev/null; then
  echo "INVALID: a floor did not start (its port taken?)" >&2; exit 1
fi
for port in 18079 18072; do
  if ! curl -sf -o /dev/null "http://127.0.0.1:$port/"; then
    echo "INVALID: the floor on port $port does not answer" >&2; exit 1
  fi
done

tick=$(getconf CLK_TCK)
# Every process of a proxy (nginx: its workers), for CPU and RSS.
proxy_pids() { # name-placement
  case "$1" in
    nginx-*) pgrep -P "$(cat "$work/$1.pid")" ;;
    haproxy-*) pgrep -f "haproxy -f $work/$1.cfg" ;;
    syncgate-*) pgrep -f "syncgate run --config $work/$1.toml" ;;
    floor-pinned) echo "$floor_pid" ;;
    floor_mt-pinned) echo "$floor_mt_pid" ;;
  esac
}
cpu_ticks() { local t=0; for p in $(proxy_pids "$1"); do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done; echo $t; }
peak_rss_kib() { local r=0; for p in $(proxy_pids "$1"); do r=$((r + $(awk '/^VmHWM/ {print $2}' "/proc/$p/status"))); done; echo $r; }
to_ms() { # wrk's "1.23ms" / "456.00us" / "1.01s" -> ms
  awk -v v="$1" 'BEGIN { if (v ~ /us$/) printf "%.3f", v / 1000; else if (v ~ /ms$/) printf "%.3f", v + 0; else if (v ~ /s$/) printf "%.3f", v * 1000; else print v }'
}
median() { sort -g | awk '{a[NR] = $1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }
# Any invalid run marks the whole measurement invalid (a file: runs happen in subshells).
mark_invalid() { : >"$work/invalid"; }

# wrk run: prints "rps p50 p99 p999 cpu_us_per_req"
wrk_run() { # proxy-placement port wrk-args...
  local name=$1 port=$2; shift 2
  local before after out reqs
  before=$(cpu_ticks "$name")
  out=$(wrk "$@" -d"${SECS}s" --latency "http://127.0.0.1:$port/")
  after=$(cpu_ticks "$name")
  if echo "$out" | grep -qE "Non-2xx|Socket errors"; then
    echo "INVALID run of $name: $(echo "$out" | grep -E "Non-2xx|Socket errors" | tr -s ' ')" >&2
    mark_invalid
  fi
  reqs=$(echo "$out" | awk '/requests in/ {print $1}')
  if [ -z "$reqs" ] || [ "$reqs" -eq 0 ]; then
    echo "INVALID run of $name: wrk counted no request" >&2
    mark_invalid
    return 0 # prints no row
  fi
  echo "$(echo "$out" | awk '/Requests\/sec/ {print $2}')" \
    "$(to_ms "$(echo "$out" | awk '$1=="50%" {print $2}')")" \
    "$(to_ms "$(echo "$out" | awk '$1=="99%" {print $2}')")" \
    "$(to_ms "$(echo "$out" | awk '$1=="99.900%" || $1=="99.9%" {print $2}')")" \
    "$(awk -v t=$((after - before)) -v hz="$tick" -v n="$reqs" 'BEGIN {printf "%.2f", t / hz * 1e6 / n}')"
}
# A wrk Lua script that reports p99.9 as well.
cat >"$work/p999.lua" <<'LUA'
done = function(summary, latency, requests)
  io.write(string.format("99.900%% %.2fus\n", latency:percentile(99.9)))
end
LUA

# syncgate's figure over another proxy's, from the same round; nothing when a run gave none.
round_ratio() { # syncgate other
  awk -v s="$1" -v o="$2" 'BEGIN { if (s != "" && o + 0 > 0) printf "%.4f\n", s / o }'
}
# The process a section measures: "$name-$placement", but syncgate's pinned instance serves
# the "same" section too (its configuration does not change, only the others' do).
proc_of() { if [ "$1" = syncgate ] && [ "$2" = same ]; then echo syncgate-pinned; else echo "$1-$2"; fi; }
section() { # title placement "ports of nginx haproxy syncgate [floor floor_mt]" wrk-args...
  local title=$1 placement=$2 ports=$3; shift 3
  echo
  echo "== $title"
  printf "%-9s %10s %9s %9s %9s %11s %9s\n" proxy "req/s" "p50 ms" "p99 ms" "p99.9 ms" "CPU µs/req" "RSS MiB"
  declare -A rows=()
  local i j name port
  for port in $ports; do wrk -t1 -c64 -d2s "http://127.0.0.1:$port/" >/dev/null; done # warm-up
  local names=(nginx haproxy syncgate floor floor_mt) portlist k run other n
  read -ra portlist <<<"$ports"
  n=${#portlist[@]}
  names=("${names[@]:0:$n}")
  local key=${title%% *}
  for ((i = 0; i < ROUNDS; i++)); do
    # The order rotates from round to round: each proxy takes every position in turn.
    local -A cpu_of=() rps_of=()
    for ((j = 0; j < n; j++)); do
      k=$(((i + j) % n)); name=${names[$k]}; port=${portlist[$k]}
      run=$(wrk_run "$(proc_of "$name" "$placement")" "$port" "$@" -s "$work/p999.lua")
      [ -n "$run" ] || continue
      rows[$name]+="$run"$'\n'
      read -r "rps_of[$name]" _ _ _ "cpu_of[$name]" <<<"$run"
    done
    # This round's ratios of syncgate to nginx, HAProxy and the floors, from runs seconds
    # apart.
    for other in "${names[@]:0:2}" "${names[@]:3}"; do
      round_ratio "${cpu_of[syncgate]:-}" "${cpu_of[$other]:-}" >>"$work/$key.cpu-$other"
      round_ratio "${rps_of[syncgate]:-}" "${rps_of[$other]:-}" >>"$work/$key.rps-$other"
      case $other in floor*) ;; *)
        # And of each floor to nginx and to HAProxy.
        for floor in "${names[@]:3}"; do
          round_ratio "${cpu_of[$floor]:-}" "${cpu_of[$other]:-}" >>"$work/$key.${floor}_cpu-$other"
        done ;;
      esac
    done
  done
  for name in "${names[@]}"; do
    local col vals=()
    for col in 1 2 3 4 5; do vals+=("$(echo -n "${rows[$name]:-}" | awk -v c=$col 'NF {print $c}' | median)"); done
    printf "%-9s %10.0f %9.3f %9.3f %9.3f %11.2f %9.1f\n" "$name" "${vals[@]}" "$(awk -v k="$(peak_rss_kib "$(proc_of "$name" "$placement")")" 'BEGIN {print k / 1024}')"
    eval "${key}_${name}_rps=${vals[0]}; ${key}_${name}_cpu=${vals[4]}"
  done
}

wrk() { if [ -n "${WRK_PIN:-}" ]; then taskset -c "$WRK_PIN" "$(type -P wrk)" "$@"; else command wrk "$@"; fi; }

WRK_PIN=1 section "pinned (proxy on core 0; backend and wrk -t1 -c64 on core 1)" pinned "18081 18082 18083 18079 18072" -t1 -c64
WRK_PIN=1 section "same headers (pinned; nginx and HAProxy also set Host, X-Forwarded-Host/-Proto and X-Request-ID)" same "18073 18074 18083" -t1 -c64
WRK_PIN="" section "unpinned (one worker per core, $CORES cores; wrk -t2 -c128)" all "18087 18088 18089" -t2 -c128

# One rate for every run. At each proxy's own half (until stop 28) the faster proxy was
# measured under more load on core 1, where the client and the backend share a core whose
# queueing is most of every run's p99 (the backend alone shows it): a comparison of the loads,
# not of the proxies. Half the highest maximum puts each proxy at or above half its own capacity.
rate=$(awk -v a="$pinned_nginx_rps" -v b="$pinned_haproxy_rps" -v c="$pinned_syncgate_rps" 'BEGIN {
  m = a; if (b > m) m = b; if (c > m) m = c; printf "%d", m / 2 }')
echo
echo "== rate ($rate req/s for all, half the highest pinned maximum; examples/rate.rs, 64 connections, latency correction, pinned placement; medians of $RATE_ROUNDS rounds of ${RATE_SECS} s)"
printf "%-9s %10s %9s %9s %9s %9s %11s\n" proxy "req/s" "p50 ms" "p95 ms" "p99 ms" "p99.9 ms" "worst p99"
# A stall of the shared host lasts seconds and counts for every request it delayed (latency
# correction): a run it hits has a p99 of 10-50 ms instead of 2-4, whichever proxy it hits,
# and a median of seven runs said mostly which runs it had hit. So more rounds, 15 by default.
# The client is examples/rate.rs, not oha (until stop 31): oha's own latencies spike at
# 4.0-4.5 s of every run with no proxy as well (most likely where its list of results doubles),
# so each run of 5 s measured how each proxy came out of the client's pause. rate.rs keeps its
# results in storage written before the first request and shows no such spike (its
# --windows). The worst run's p99 is printed too.
# Each proxy runs once per round, in a rotating order, and the ratios at the end take each
# round's own p99 ratios too, and count the rounds in which syncgate's was the higher.
# The backend alone (the client straight to it) is the latency of the client, the backend and
# the machine without a proxy: what every proxy's figures contain.
rate_runs=(nginx:18081 haproxy:18082 syncgate:18083 floor:18079 backend:18080)
declare -A rate_rows=()
for ((i = 0; i < RATE_ROUNDS; i++)); do
  declare -A p99_of=()
  for ((j = 0; j < ${#rate_runs[@]}; j++)); do
    run=${rate_runs[$(((i + j) % ${#rate_runs[@]}))]}
    name=${run%%:*}; port=${run##*:}
    # "p50 p95 p99 p99.9 achieved" in ms and req/s; it fails on any non-2xx answer or error.
    row=$(taskset -c 1 ./target/release/examples/rate "127.0.0.1:$port" "$rate" "$RATE_SECS") ||
      { echo "INVALID run of $name: the client failed (non-2xx answers, failed or unanswered requests; its message above)" >&2; mark_invalid; continue; }
    rate_rows[$name]+="$row"$'\n'
    p99_of[$name]=$(echo "$row" | awk '{print $3}')
  done
  for other in nginx haproxy; do
    round_ratio "${p99_of[syncgate]:-}" "${p99_of[$other]:-}" >>"$work/rate.p99-$other"
  done
done
for name in nginx haproxy syncgate floor backend; do
  vals=()
  for col in 1 2 3 4 5; do vals+=("$(echo -n "${rate_rows[$name]:-}" | awk -v c=$col 'NF {print $c}' | median)"); done
  worst=$(echo -n "${rate_rows[$name]:-}" | awk 'NF && $3 > w {w = $3} END {print w + 0}')
  # The client falls behind its schedule when its core is saturated: then the latencies
  # measure the client, not the proxy.
  behind=$(awk -v got="${vals[4]:-0}" -v want="$rate" 'BEGIN {
    if (got < 0.95 * want) print "  (client behind its schedule: latencies are not the proxy figures)" }')
  printf "%-9s %10s %9.3f %9.3f %9.3f %9.3f %11.3f  achieved %.0f/s%s\n" "$name" "$rate" "${vals[0]:-0}" "${vals[1]:-0}" "${vals[2]:-0}" "${vals[3]:-0}" "$worst" "${vals[4]:-0}" "$behind"
  eval "rate_${name}_p99=${vals[2]:-}"
done

echo
echo "== h2 (h2load -c16 -m10 over cleartext HTTP/2, pinned placement; h2load on core 1)"
printf "%-9s %10s %11s\n" proxy "req/s" "CPU µs/req"
declare -A h2rows=()
h2runs=(nginx:18085 haproxy:18086 syncgate:18083)
for ((i = 0; i < ROUNDS; i++)); do
  declare -A h2cpu=()
  for ((j = 0; j < 3; j++)); do
    run=${h2runs[$(((i + j) % 3))]}
    name=${run%%:*}; port=${run##*:}
    n=$((SECS * 20000))
    before=$(cpu_ticks "$name-pinned")
    out=$(taskset -c 1 h2load -n "$n" -c 16 -m 10 "http://127.0.0.1:$port/")
    after=$(cpu_ticks "$name-pinned")
    if ! echo "$out" | grep -q "$n succeeded, 0 failed, 0 errored" || ! echo "$out" | grep -q "status codes: $n 2xx"; then
      echo "INVALID run of $name: $(echo "$out" | grep requests:)" >&2; mark_invalid
    fi
    h2cpu[$name]=$(awk -v t=$((after - before)) -v hz="$tick" -v n="$n" 'BEGIN {printf "%.2f", t / hz * 1e6 / n}')
    h2rows[$name]+="$(echo "$out" | awk '/finished in/ {print $4 + 0}' | head -1) ${h2cpu[$name]}"$'\n'
  done
  round_ratio "${h2cpu[syncgate]:-}" "${h2cpu[haproxy]:-}" >>"$work/h2.cpu-haproxy"
done
for name in nginx haproxy syncgate; do
  rps=$(echo -n "${h2rows[$name]}" | awk 'NF {print $1}' | median)
  cpu=$(echo -n "${h2rows[$name]}" | awk 'NF {print $2}' | median)
  printf "%-9s %10.0f %11.2f\n" "$name" "$rps" "$cpu"
  eval "h2_${name}_cpu=$cpu"
done

echo
echo "== ratios (syncgate / the better of nginx and HAProxy)"
# Two estimates of each: the ratio of the medians above; and, from each round's own ratios of
# syncgate to nginx and to HAProxy (runs seconds apart), the median of each, the one against
# the better proxy (the larger CPU ratio, the smaller throughput ratio). The load of a shared
# machine drifts over minutes and now and then slows one run by 20%; the second estimate
# cancels the drift and shrugs off a slowed run, and is the one to read when the two disagree.
# (Taking the better of the two proxies per round instead would compare syncgate with the
# luckier of two noisy runs: biased against it.)
printf "%-34s %9s %11s\n" "" "medians" "of rounds"
# The median of the rounds' ratios in file $1; nothing when there are none.
round_median() { if [ -s "$1" ]; then median <"$1"; fi; }
ratio() { # key cpu|rps|FLOOR_cpu syncgate-or-FLOOR nginx haproxy what low|high
  local vs_nginx vs_haproxy
  vs_nginx=$(round_median "$work/$1.$2-nginx")
  vs_haproxy=$(round_median "$work/$1.$2-haproxy")
  awk -v s="$3" -v a="$4" -v b="$5" -v what="$6" -v better="$7" -v n="$vs_nginx" -v h="$vs_haproxy" 'BEGIN {
    best = (better == "low") ? (a < b ? a : b) : (a > b ? a : b)
    if (n == "") r = h; else if (h == "") r = n; else r = (better == "low") ? (n > h ? n : h) : (n < h ? n : h)
    m = (s != "" && best + 0 > 0) ? sprintf("%.2fx", s / best) : "-"
    printf "%-34s %9s %11s\n", what, m, (r == "") ? "-" : sprintf("%.2fx", r) }'
}
ratio pinned cpu "$pinned_syncgate_cpu" "$pinned_nginx_cpu" "$pinned_haproxy_cpu" "CPU per request, pinned" low
ratio pinned rps "$pinned_syncgate_rps" "$pinned_nginx_rps" "$pinned_haproxy_rps" "throughput, pinned" high
ratio same cpu "$same_syncgate_cpu" "$same_nginx_cpu" "$same_haproxy_cpu" "CPU per request, same headers" low
ratio same rps "$same_syncgate_rps" "$same_nginx_rps" "$same_haproxy_rps" "throughput, same headers" high
ratio unpinned cpu "$unpinned_syncgate_cpu" "$unpinned_nginx_cpu" "$unpinned_haproxy_cpu" "CPU per request, unpinned" low
ratio unpinned rps "$unpinned_syncgate_rps" "$unpinned_nginx_rps" "$unpinned_haproxy_rps" "throughput, unpinned" high
ratio rate p99 "$rate_syncgate_p99" "$rate_nginx_p99" "$rate_haproxy_p99" "p99 at one rate (half the highest)" low
for other in nginx haproxy; do
  if [ -s "$work/rate.p99-$other" ]; then
    awk -v other="$other" '$1 > 1 {n++} END {
      printf "  syncgate'"'"'s p99 above %s'"'"'s in %d rounds of %d\n", other, n, NR }' "$work/rate.p99-$other"
  fi
done
ratio h2 cpu "$h2_syncgate_cpu" "$h2_haproxy_cpu" "$h2_haproxy_cpu" "CPU per request, HTTP/2 vs HAProxy" low
# And over the floors, bare hyper proxies (examples/floor.rs): what syncgate does beyond
# forwarding, net of what it does differently (floor_mt: in a process of more than one
# thread, as syncgate's always is); and the floors' ratios to the better proxy: about where
# a proxy on this stack that only forwards stands against nginx and HAProxy.
echo
printf "%-34s %9s %11s\n" "over the floors (examples/floor.rs)" medians "of rounds"
for floor in floor floor_mt; do
  f="pinned_${floor}_cpu"
  awk -v s="$pinned_syncgate_cpu" -v f="${!f}" -v r="$(round_median "$work/pinned.cpu-$floor")" -v what="CPU per request, sg / $floor" 'BEGIN {
    printf "%-34s %9s %11s\n", what, (f + 0 > 0) ? sprintf("%.2fx", s / f) : "-", (r == "") ? "-" : sprintf("%.2fx", r) }'
done
ratio pinned floor_cpu "$pinned_floor_cpu" "$pinned_nginx_cpu" "$pinned_haproxy_cpu" "CPU per request, floor / better" low
ratio pinned floor_mt_cpu "$pinned_floor_mt_cpu" "$pinned_nginx_cpu" "$pinned_haproxy_cpu" "CPU per request, floor_mt / better" low
if [ -e "$work/invalid" ]; then echo "INVALID: some run had errors or non-2xx answers (see above)"; exit 1; fi
