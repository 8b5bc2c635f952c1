#!/usr/bin/env bash
# bench-fleet.sh: measures `simdevice fleet` against localhub, each in its
# own process on this machine: how long registering and connecting COUNT
# devices takes, and what they cost in memory (RSS of both processes, the
# fleet's Go heap) and CPU. Prints a Markdown table on stdout (progress on
# stderr), which `make bench-fleet` keeps in .bin/bench-fleet.md for
# BENCHMARKS.md.
#
#   COUNT=10000 (devices)  SETTLE=10 (seconds idle before sampling)
#   CONNECT_CONCURRENCY=64  KEEP=1 (keep the logs in the work dir)
#
# It starts and stops its own localhub on free ports with a fresh state
# directory, so it does not touch `make up`'s stack.
set -euo pipefail
cd "$(dirname "$0")/.."
COUNT=${COUNT:-10000}
SETTLE=${SETTLE:-10}
CONNECT_CONCURRENCY=${CONNECT_CONCURRENCY:-64}

work=$(mktemp -d "${TMPDIR:-/tmp}/dmflow-bench-fleet.XXXXXX")
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  if [[ -n "${KEEP:-}" ]]; then echo "logs kept in $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT

# Each device is a socket on both sides.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if (( $(ulimit -n) < COUNT + 1000 )); then
  echo "bench-fleet: open-file limit $(ulimit -n) is too low for $COUNT devices: raise it (ulimit -n)" >&2
  exit 1
fi

# wait_for FILE PATTERN SECONDS [PID]: waits until FILE holds PATTERN.
wait_for() {
  local file=$1 pattern=$2 secs=$3 pid=${4:-}
  for ((i = 0; i < secs * 10; i++)); do
    grep -q -- "$pattern" "$file" 2>/dev/null && return 0
    if [[ -n "$pid" ]] && ! kill -0 "$pid" 2>/dev/null; then
      echo "bench-fleet: process $pid exited before '$pattern'; log:" >&2; tail -20 "$file" >&2; exit 1
    fi
    sleep 0.1
  done
  echo "bench-fleet: no '$pattern' in $file within ${secs}s; log:" >&2; tail -20 "$file" >&2; exit 1
}
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
# cpu_s PID: user+system CPU seconds of a process.
cpu_s() { awk -v hz="$(getconf CLK_TCK)" '{printf "%.1f", ($14 + $15) / hz}' "/proc/$1/stat"; }
# field LINE KEY: the value of key=value in a text log line.
field() { sed -n "s/.* $2=\\([^ ]*\\).*/\\1/p" <<<"$1"; }

echo "building localhub and simdevice" >&2
go build -o "$work/bin/" ./localhub ./simdevice

# --no-throttle: the benchmark measures localhub's and the fleet's own
# capacity; at S1 quotas (100 new connections/s) 10,000 devices take 100 s
# to connect whatever the machine can do.
"$work/bin/localhub" --state-dir "$work/state" --mqtt-addr 127.0.0.1:0 --https-addr 127.0.0.1:0 --no-throttle \
  >"$work/localhub.out" 2>"$work/localhub.log" &
lh=$!
pids+=("$lh")
wait_for "$work/localhub.out" "localhub ready" 30 "$lh"
mqtt=$(sed -n 's/.* mqtt=\([^ ]*\) .*/\1/p' "$work/localhub.out")
IOTHUB_CONNECTION_STRING=$("$work/bin/localhub" connection-string --state-dir "$work/state")
export IOTHUB_CONNECTION_STRING DMFLOW_HUB_CA_FILE=$work/state/ca.pem DMFLOW_MQTT_BROKER=tls://$mqtt

run_fleet() {
  "$work/bin/simdevice" fleet --count "$COUNT" --summary-interval 2s \
    --connect-concurrency "$CONNECT_CONCURRENCY" >"$1" 2>&1 &
  fl=$!
  pids+=("$fl")
}

echo "fleet of $COUNT devices: registering and connecting" >&2
run_fleet "$work/fleet.log"
wait_for "$work/fleet.log" 'msg="fleet started"' 600 "$fl"
started=$(grep 'msg="fleet started"' "$work/fleet.log")
registered=$(grep 'msg="fleet registered"' "$work/fleet.log")
fl_cpu_start=$(cpu_s "$fl")
lh_cpu_start=$(cpu_s "$lh")

echo "connected; idling ${SETTLE}s before sampling" >&2
# The last summary (every 2s) then falls in the idle window.
sleep "$SETTLE"
summary=$(grep 'msg="fleet summary"' "$work/fleet.log" | tail -1)
fl_rss=$(rss_kb "$fl")
lh_rss=$(rss_kb "$lh")
fl_idle=$(awk -v a="$fl_cpu_start" -v b="$(cpu_s "$fl")" -v s="$SETTLE" 'BEGIN {printf "%.0f", (b - a) / s * 100}')
lh_idle=$(awk -v a="$lh_cpu_start" -v b="$(cpu_s "$lh")" -v s="$SETTLE" 'BEGIN {printf "%.0f", (b - a) / s * 100}')

stop_begin=$(date +%s.%N)
kill -TERM "$fl"
wait "$fl" || true
stop_took=$(awk -v a="$stop_begin" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1fs", b - a}')

echo "second fleet on the same hub: registering $COUNT existing devices" >&2
run_fleet "$work/fleet2.log"
wait_for "$work/fleet2.log" 'msg="fleet registered"' 300 "$fl"
reregistered=$(grep 'msg="fleet registered"' "$work/fleet2.log")
kill -TERM "$fl"
wait "$fl" || true

heap_mb=$(field "$summary" heap_mb)
cat <<EOF

| measure | value |
|---|---|
| devices | $COUNT (connected: $(field "$summary" connected)) |
| register $COUNT new identities (bulk, 100 per request) | $(field "$registered" took) |
| register again, all existing (bulk 409s + one GET each) | $(field "$reregistered" took) |
| connect $COUNT (TLS + CONNECT + twin read + standBy report + 2 subscriptions, $CONNECT_CONCURRENCY at a time) | $(field "$started" took) |
| CPU while connecting: simdevice / localhub | ${fl_cpu_start}s / ${lh_cpu_start}s |
| simdevice RSS | $((fl_rss / 1024)) MB = $((fl_rss / COUNT)) KB per device |
| simdevice Go heap in use | ${heap_mb} MB = $((heap_mb * 1024 / COUNT)) KB per device |
| simdevice goroutines | $(field "$summary" goroutines) |
| localhub RSS | $((lh_rss / 1024)) MB = $((lh_rss / COUNT)) KB per device |
| idle CPU (keepalives), % of one core: simdevice / localhub | ${fl_idle}% / ${lh_idle}% |
| stop the fleet (disconnect all) | $stop_took |
EOF
