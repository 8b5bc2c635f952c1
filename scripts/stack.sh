#!/usr/bin/env bash
# stack.sh up|down|status: the local dmflow stack (Temporal dev server,
# localhub, worker) as background processes with PID files in the state dir.
# Every process started here is stopped by `stack.sh down`, by PID.
set -euo pipefail

cd "$(dirname "$0")/.."
STATE=${DMFLOW_STATE_DIR:-.dmflow}
BIN=${DMFLOW_BIN_DIR:-.bin}
TEMPORAL_PORT=${DMFLOW_TEMPORAL_PORT:-7233}
TEMPORAL_UI_PORT=${DMFLOW_TEMPORAL_UI_PORT:-8233}
MQTT_PORT=${DMFLOW_MQTT_PORT:-8883}
HTTPS_PORT=${DMFLOW_HTTPS_PORT:-8443}
# The worker's Prometheus endpoint (/metrics, /healthz), on the loopback only.
METRICS_PORT=${DMFLOW_METRICS_PORT:-9464}
# Search attributes dmflow's workflows upsert; keep in step with workflows/api.go.
SEARCH_ATTRIBUTES=${DMFLOW_SEARCH_ATTRIBUTES:-DmflowDevice=Keyword DmflowOperation=Keyword DmflowTargetVersion=Keyword DmflowRollout=Keyword DmflowRolloutState=Keyword}

log() { printf '%s\n' "$*" >&2; }
die() { log "stack: $*"; exit 1; }

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# wait_for NAME PIDFILE LOGFILE PATTERN SECONDS: until the log shows PATTERN,
# failing early (with the log's tail) if the process dies.
wait_for() {
  local name=$1 pidfile=$2 logfile=$3 pattern=$4 secs=$5 i
  for ((i = 0; i < secs * 5; i++)); do
    if grep -q -- "$pattern" "$logfile" 2>/dev/null; then return 0; fi
    if ! kill -0 "$(cat "$pidfile")" 2>/dev/null; then
      log "stack: $name exited while starting; last lines of $logfile:"
      tail -n 20 "$logfile" >&2 || true
      rm -f "$pidfile"
      return 1
    fi
    sleep 0.2
  done
  log "stack: $name not ready after ${secs}s; last lines of $logfile:"
  tail -n 20 "$logfile" >&2 || true
  return 1
}

# start NAME CMD...: runs CMD in the background, logs to STATE/NAME.log.
start() {
  local name=$1; shift
  local pidfile=$STATE/$name.pid
  if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    log "stack: $name already running (pid $(cat "$pidfile"))"
    return 0
  fi
  # A session of its own: a Ctrl-C meant for the demo does not reach the
  # stack directly, so `down` stops it in order (devices, worker, hub,
  # Temporal). setsid does not fork here (we are not a group leader), so $!
  # is the process itself.
  setsid "$@" </dev/null >"$STATE/$name.log" 2>&1 &
  echo $! >"$pidfile"
}

stop() {
  local name=$1 pidfile=$STATE/$1.pid pid i
  [ -f "$pidfile" ] || return 0
  pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      log "stack: $name (pid $pid) ignored SIGTERM for 10s; sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
    fi
    log "stopped $name (pid $pid)"
  fi
  rm -f "$pidfile"
}

running() { [ -f "$STATE/$1.pid" ] && kill -0 "$(cat "$STATE/$1.pid")" 2>/dev/null; }

up() {
  mkdir -p "$STATE"
  for b in temporal localhub worker starter simdevice; do
    [ -x "$BIN/$b" ] || die "$BIN/$b is missing: run 'make build' first"
  done

  if ! running temporal; then
    port_busy "$TEMPORAL_PORT" && die "port $TEMPORAL_PORT is in use: another Temporal server? stop it, or run 'make down'"
    local sa=()
    for a in $SEARCH_ATTRIBUTES; do sa+=(--search-attribute "$a"); done
    start temporal "$BIN/temporal" server start-dev \
      --db-filename "$STATE/temporal.db" --port "$TEMPORAL_PORT" --ui-port "$TEMPORAL_UI_PORT" \
      --log-level warn "${sa[@]}"
    local i
    for ((i = 0; i < 150; i++)); do
      "$BIN/temporal" operator cluster health --address "127.0.0.1:$TEMPORAL_PORT" >/dev/null 2>&1 && break
      running temporal || { tail -n 20 "$STATE/temporal.log" >&2; die "Temporal dev server exited while starting"; }
      sleep 0.2
    done
    "$BIN/temporal" operator cluster health --address "127.0.0.1:$TEMPORAL_PORT" >/dev/null 2>&1 ||
      die "Temporal dev server not healthy after 30s (log: $STATE/temporal.log)"
    # --search-attribute registers attributes only in a new database; a
    # state dir from an older dmflow lacks the ones added since, and a
    # workflow upserting one would stall. Add any that are missing.
    local have a
    have=$("$BIN/temporal" operator search-attribute list --address "127.0.0.1:$TEMPORAL_PORT" 2>/dev/null || true)
    for a in $SEARCH_ATTRIBUTES; do
      if ! grep -qw -- "${a%%=*}" <<<"$have"; then
        "$BIN/temporal" operator search-attribute create --address "127.0.0.1:$TEMPORAL_PORT" \
          --name "${a%%=*}" --type "${a#*=}" >/dev/null ||
          die "could not register search attribute ${a%%=*} (log: $STATE/temporal.log)"
        log "temporal  registered search attribute ${a%%=*}"
      fi
    done
    log "temporal  ready  grpc=127.0.0.1:$TEMPORAL_PORT ui=http://localhost:$TEMPORAL_UI_PORT"
  fi

  if ! running localhub; then
    port_busy "$MQTT_PORT" && die "port $MQTT_PORT (localhub MQTT) is in use: stop what holds it, or set DMFLOW_MQTT_PORT"
    port_busy "$HTTPS_PORT" && die "port $HTTPS_PORT (localhub HTTPS) is in use: stop what holds it, or set DMFLOW_HTTPS_PORT"
    # localhub throttles like an S1 hub with one unit; DMFLOW_LOCALHUB_TIER,
    # _UNITS, _QUOTAS and _NO_THROTTLE in the environment change that.
    start localhub "$BIN/localhub" --state-dir "$STATE/localhub" \
      --mqtt-addr "127.0.0.1:$MQTT_PORT" --https-addr "127.0.0.1:$HTTPS_PORT"
    wait_for localhub "$STATE/localhub.pid" "$STATE/localhub.log" "localhub ready" 30 || die "localhub did not start"
    log "localhub  ready  mqtt=127.0.0.1:$MQTT_PORT https=127.0.0.1:$HTTPS_PORT"
  fi

  # The environment a user needs to run dmflow commands by hand; it holds the
  # service key, so it is private to the user and git-ignored.
  local cs
  cs=$("$BIN/localhub" connection-string --state-dir "$STATE/localhub") || die "localhub connection-string failed"
  (
    umask 077
    cat >"$STATE/env" <<ENV
export IOTHUB_CONNECTION_STRING='$cs'
export DMFLOW_HUB_CA_FILE='$PWD/$STATE/localhub/ca.pem'
export DMFLOW_MQTT_BROKER='tls://127.0.0.1:$MQTT_PORT'
export TEMPORAL_ADDRESS='127.0.0.1:$TEMPORAL_PORT'
export DMFLOW_TEMPORAL_UI='http://localhost:$TEMPORAL_UI_PORT'
ENV
  )

  if ! running worker; then
    port_busy "$METRICS_PORT" && die "port $METRICS_PORT (worker metrics) is in use: stop what holds it, or set DMFLOW_METRICS_PORT"
    # shellcheck disable=SC1091
    (. "$STATE/env" && start worker "$BIN/worker" --metrics-address "127.0.0.1:$METRICS_PORT")
    wait_for worker "$STATE/worker.pid" "$STATE/worker.log" "worker ready" 30 || die "worker did not start"
    log "worker    ready  metrics=http://127.0.0.1:$METRICS_PORT/metrics (log: $STATE/worker.log)"
  fi
  log "stack up: Temporal UI http://localhost:$TEMPORAL_UI_PORT — 'source $STATE/env' to use it by hand, 'make down' to stop"
}

down() {
  # Devices first, then the worker, then what they depend on.
  local f
  for f in "$STATE"/simdevice*.pid; do
    [ -e "$f" ] && stop "$(basename "$f" .pid)"
  done
  stop worker
  stop localhub
  stop temporal
}

status() {
  local n
  for n in temporal localhub worker; do
    if running "$n"; then echo "$n: running (pid $(cat "$STATE/$n.pid"))"; else echo "$n: stopped"; fi
  done
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  start) shift; start "$@" ;;
  wait-for) shift; wait_for "$@" ;;
  *) die "usage: scripts/stack.sh up|down|status" ;;
esac
