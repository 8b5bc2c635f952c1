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
# What the production-shaped stacks share (make up-cluster, docker-compose.yml).
CLUSTER_ENV=deploy/cluster.env

# load_cluster_env: every KEY=value of CLUSTER_ENV into the environment,
# unless the environment already has KEY.
load_cluster_env() {
  local line k v
  while IFS= read -r line || [ -n "$line" ]; do
    case $line in '' | '#'*) continue ;; esac
    k=${line%%=*} v=${line#*=}
    v=${v#\"} v=${v%\"}
    [ -n "${!k+set}" ] || export "$k=$v"
  done <"$CLUSTER_ENV"
}

# cluster_env KEY: KEY's value in CLUSTER_ENV, as load_cluster_env reads it.
cluster_env() {
  (
    unset "$1"
    load_cluster_env
    printf '%s\n' "${!1:?$CLUSTER_ENV has no $1}"
  )
}

# Search attributes dmflow's workflows upsert (deploy/cluster.env; a test
# keeps it in step with workflows/api.go).
SEARCH_ATTRIBUTES=${DMFLOW_SEARCH_ATTRIBUTES:-$(cluster_env DMFLOW_SEARCH_ATTRIBUTES)}

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

# stop NAME [SIGNAL]: SIGNAL (TERM) to NAME's process, SIGKILL if it is
# still there 10 s later (30 s for PostgreSQL, whose fast shutdown, SIGINT,
# writes a checkpoint).
stop() {
  local name=$1 sig=${2:-TERM} pidfile=$STATE/$1.pid pid i wait=100
  [ -f "$pidfile" ] || return 0
  pid=$(cat "$pidfile")
  [ "$sig" = INT ] && wait=300
  if kill -0 "$pid" 2>/dev/null; then
    kill -"$sig" "$pid" 2>/dev/null || true
    for ((i = 0; i < wait; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      log "stack: $name (pid $pid) ignored SIG$sig for $((wait / 10))s; sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
    fi
    log "stopped $name (pid $pid)"
  fi
  rm -f "$pidfile"
}

running() { [ -f "$STATE/$1.pid" ] && kill -0 "$(cat "$STATE/$1.pid")" 2>/dev/null; }

# start_localhub: localhub on MQTT_PORT and HTTPS_PORT with its state in
# STATE/localhub, unless it runs.
start_localhub() {
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
}

# write_env TEMPORAL_ADDRESS UI_URL: the environment a user needs to run
# dmflow commands by hand; it holds the service key, so it is private to the
# user and git-ignored.
write_env() {
  local cs state=$STATE
  case $state in /*) ;; *) state=$PWD/$state ;; esac
  cs=$("$BIN/localhub" connection-string --state-dir "$STATE/localhub") || die "localhub connection-string failed"
  (
    umask 077
    cat >"$STATE/env" <<ENV
export IOTHUB_CONNECTION_STRING='$cs'
export DMFLOW_HUB_CA_FILE='$state/localhub/ca.pem'
export DMFLOW_MQTT_BROKER='tls://127.0.0.1:$MQTT_PORT'
export TEMPORAL_ADDRESS='$1'
export DMFLOW_TEMPORAL_UI='$2'
ENV
  )
}

# start_worker NAME METRICS_PORT: a dmflow worker with the environment of
# STATE/env, unless it runs.
start_worker() {
  local name=$1 port=$2
  running "$name" && return 0
  port_busy "$port" && die "port $port ($name metrics) is in use: stop what holds it, or set DMFLOW_METRICS_PORT"
  # shellcheck disable=SC1091
  (. "$STATE/env" && start "$name" "$BIN/worker" --metrics-address "127.0.0.1:$port")
  wait_for "$name" "$STATE/$name.pid" "$STATE/$name.log" "worker ready" 30 || die "$name did not start"
  log "$name ready  metrics=http://127.0.0.1:$port/metrics (log: $STATE/$name.log)"
}

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

  start_localhub
  write_env "127.0.0.1:$TEMPORAL_PORT" "http://localhost:$TEMPORAL_UI_PORT"
  start_worker worker "$METRICS_PORT"
  log "stack up: Temporal UI http://localhost:$TEMPORAL_UI_PORT — 'source $STATE/env' to use it by hand, 'make down' to stop"
}

# --- The production shape without Docker: `make up-cluster` ---------------
# PostgreSQL in STATE/postgresql, the Temporal server on it (schema applied
# and namespace set up by the same scripts the compose stack runs), its Web
# UI, localhub and two workers. Values shared with docker-compose.yml come
# from deploy/cluster.env; the environment overrides them.

# pg_bindir: the directory of PostgreSQL's initdb and postgres.
pg_bindir() {
  if [ -n "${DMFLOW_POSTGRES_BIN:-}" ]; then
    [ -x "$DMFLOW_POSTGRES_BIN/postgres" ] || die "DMFLOW_POSTGRES_BIN=$DMFLOW_POSTGRES_BIN has no postgres: set it to the directory with initdb and postgres"
    echo "$DMFLOW_POSTGRES_BIN"
    return
  fi
  local d
  d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  [ -n "$d" ] && [ -x "$d/postgres" ] ||
    die "PostgreSQL not found: install it (Debian: apt-get install postgresql), or set DMFLOW_POSTGRES_BIN to the directory with initdb and postgres"
  local major=${d#/usr/lib/postgresql/}
  major=${major%%/*}
  [ "${major%%.*}" -ge 12 ] || die "PostgreSQL $major found in $d; Temporal's postgres12 plugin needs 12 or later"
  echo "$d"
}

# as_pg CMD...: runs CMD as PG_OS_USER when we are root (initdb and postgres
# refuse to run as root), else as ourselves. setpriv execs, so a PID taken of
# it is PostgreSQL's own.
as_pg() { "${PG_AS[@]}" "$@"; }

start_postgresql() {
  running postgresql && return 0
  local pgbin data=$STATE/postgresql pwfile=$STATE/postgresql.password
  pgbin=$(pg_bindir)
  port_busy "$PG_PORT" && die "port $PG_PORT (PostgreSQL) is in use: stop what holds it, or set DMFLOW_POSTGRES_PORT"
  if [ ! -s "$data/PG_VERSION" ]; then
    if [ "$(id -u)" = 0 ]; then
      as_pg test -x "$STATE" ||
        die "$PG_OS_USER cannot reach $STATE: PostgreSQL runs as $PG_OS_USER (not root); make the directories above it searchable (chmod o+x) or set DMFLOW_STATE_DIR"
    fi
    # The database user's password: made once, kept private to us; the
    # server and the schema tool read it from their environment.
    (umask 077 && od -An -tx1 -N24 /dev/urandom | tr -d ' \n' >"$pwfile")
    rm -rf "$data"
    mkdir -p "$data"
    local pw=$data.initpw
    cp "$pwfile" "$pw"
    if [ "$(id -u)" = 0 ]; then chown "$PG_OS_USER" "$data" "$pw"; fi
    chmod 700 "$data"
    as_pg "$pgbin/initdb" -D "$data" -U temporal --pwfile="$pw" --auth=scram-sha-256 \
      --encoding=UTF8 --locale=C >"$STATE/postgresql-initdb.log" 2>&1 || {
      rm -f "$pw"
      tail -n 20 "$STATE/postgresql-initdb.log" >&2
      die "initdb failed (log: $STATE/postgresql-initdb.log)"
    }
    rm -f "$pw"
    log "postgresql  initialised $data ($("$pgbin/postgres" --version))"
  fi
  [ -s "$pwfile" ] || die "$pwfile is missing, so nothing can log in to $data: 'make down', remove $data, and run 'make up-cluster' again"
  # TCP on the loopback only, no socket file; connections sized with
  # Temporal's pools (deploy/cluster.env).
  start postgresql "${PG_AS[@]}" "$pgbin/postgres" -D "$data" \
    -c listen_addresses=127.0.0.1 -c port="$PG_PORT" -c unix_socket_directories= \
    -c max_connections="$POSTGRES_MAX_CONNECTIONS"
  local i
  for ((i = 0; i < 150; i++)); do
    "$pgbin/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" && break
    running postgresql || { tail -n 20 "$STATE/postgresql.log" >&2; die "PostgreSQL exited while starting"; }
    sleep 0.2
  done
  "$pgbin/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" || die "PostgreSQL not ready after 30s (log: $STATE/postgresql.log)"
  log "postgresql  ready  127.0.0.1:$PG_PORT (data: $data)"
}

# temporal_server_env: the variables the server's embedded configuration
# template reads (the same the temporalio/server image takes).
temporal_server_env() {
  local pw
  pw=$(cat "$STATE/postgresql.password")
  printf '%s\n' DB=postgres12 POSTGRES_SEEDS=127.0.0.1 DB_PORT="$PG_PORT" \
    POSTGRES_USER=temporal POSTGRES_PWD="$pw" BIND_ON_IP=127.0.0.1 \
    NUM_HISTORY_SHARDS="$NUM_HISTORY_SHARDS" \
    SQL_MAX_CONNS="$SQL_MAX_CONNS" SQL_MAX_IDLE_CONNS="$SQL_MAX_IDLE_CONNS" \
    SQL_VIS_MAX_CONNS="$SQL_VIS_MAX_CONNS" SQL_VIS_MAX_IDLE_CONNS="$SQL_VIS_MAX_IDLE_CONNS" \
    FRONTEND_GRPC_PORT="$TEMPORAL_PORT" \
    FRONTEND_HTTP_PORT="${DMFLOW_CLUSTER_FRONTEND_HTTP_PORT:-7243}" \
    FRONTEND_MEMBERSHIP_PORT="${DMFLOW_CLUSTER_FRONTEND_MEMBERSHIP_PORT:-6933}" \
    HISTORY_GRPC_PORT="${DMFLOW_CLUSTER_HISTORY_PORT:-7234}" \
    HISTORY_MEMBERSHIP_PORT="${DMFLOW_CLUSTER_HISTORY_MEMBERSHIP_PORT:-6934}" \
    MATCHING_GRPC_PORT="${DMFLOW_CLUSTER_MATCHING_PORT:-7235}" \
    MATCHING_MEMBERSHIP_PORT="${DMFLOW_CLUSTER_MATCHING_MEMBERSHIP_PORT:-6935}" \
    WORKER_GRPC_PORT="${DMFLOW_CLUSTER_WORKER_PORT:-7239}" \
    WORKER_MEMBERSHIP_PORT="${DMFLOW_CLUSTER_WORKER_MEMBERSHIP_PORT:-6939}" \
    DYNAMIC_CONFIG_FILE_PATH="$PWD/deploy/temporal/dynamicconfig.yaml" \
    LOG_LEVEL="${DMFLOW_TEMPORAL_LOG_LEVEL:-warn}" TEMPORAL_ALLOW_NO_AUTH="$TEMPORAL_ALLOW_NO_AUTH"
}

start_temporal_server() {
  local kv
  # PostgreSQL's cluster_membership table keeps the services' ports in a
  # smallint: a port above 32767 stops the server at its first heartbeat.
  for kv in $(temporal_server_env | grep -E '^(FRONTEND|HISTORY|MATCHING|WORKER)_[A-Z_]*PORT='); do
    [ "${kv#*=}" -le 32767 ] || die "${kv%%=*}=${kv#*=}: Temporal on PostgreSQL needs its ports at 32767 or below (the membership table stores them as smallint); choose lower ports"
  done
  if ! running temporal-server; then
    port_busy "$TEMPORAL_PORT" && die "port $TEMPORAL_PORT is in use: another Temporal server? stop it, or run 'make down'"
    # The schema, as the compose stack's temporal-schema job applies it.
    SQL_PLUGIN=postgres12 SQL_HOST=127.0.0.1 SQL_PORT="$PG_PORT" SQL_USER=temporal \
      SQL_PASSWORD="$(cat "$STATE/postgresql.password")" TEMPORAL_SCHEMA_DIR="$BIN/temporal-schema" \
      PATH="$BIN:$PATH" sh deploy/temporal/schema.sh >"$STATE/temporal-schema.log" 2>&1 || {
      tail -n 20 "$STATE/temporal-schema.log" >&2
      die "the Temporal schema could not be applied (log: $STATE/temporal-schema.log)"
    }
    log "temporal-server  schema at $TEMPORAL_SERVER_VERSION's (log: $STATE/temporal-schema.log)"
    # No flags: the server reads its embedded configuration template, as in
    # its image. env -i keeps the password out of every other process.
    local -a senv
    mapfile -t senv < <(temporal_server_env)
    start temporal-server env -i PATH="$PATH" "${senv[@]}" "$BIN/temporal-server" start
  fi
  local i
  for ((i = 0; i < 300; i++)); do
    "$BIN/temporal" operator cluster health --address "127.0.0.1:$TEMPORAL_PORT" >/dev/null 2>&1 && break
    running temporal-server || { tail -n 20 "$STATE/temporal-server.log" >&2; die "the Temporal server exited while starting"; }
    sleep 0.2
  done
  # The namespace and the search attributes, as the compose stack's
  # temporal-setup job creates them.
  TEMPORAL_ADDRESS="127.0.0.1:$TEMPORAL_PORT" PATH="$BIN:$PATH" TEMPORAL_CONFIG_FILE=/dev/null \
    sh deploy/temporal/setup.sh >"$STATE/temporal-setup.log" 2>&1 || {
    tail -n 20 "$STATE/temporal-setup.log" >&2
    die "the namespace could not be set up (log: $STATE/temporal-setup.log, server log: $STATE/temporal-server.log)"
  }
  log "temporal-server  ready  grpc=127.0.0.1:$TEMPORAL_PORT namespace=$TEMPORAL_NAMESPACE (log: $STATE/temporal-server.log)"
}

start_temporal_ui() {
  running temporal-ui && return 0
  port_busy "$TEMPORAL_UI_PORT" && die "port $TEMPORAL_UI_PORT (Temporal UI) is in use: stop what holds it, or set DMFLOW_TEMPORAL_UI_PORT"
  local dir=$STATE/temporal-ui
  mkdir -p "$dir/config"
  cat >"$dir/config/cluster.yaml" <<UI
# Written by scripts/stack.sh up-cluster.
temporalGrpcAddress: 127.0.0.1:$TEMPORAL_PORT
host: 127.0.0.1
port: $TEMPORAL_UI_PORT
enableUi: true
defaultNamespace: $TEMPORAL_NAMESPACE
disableNewsFetch: true
UI
  start temporal-ui "$BIN/temporal-ui-server" --root "$dir" --config config --env cluster start
  local i
  for ((i = 0; i < 150; i++)); do
    port_busy "$TEMPORAL_UI_PORT" && break
    running temporal-ui || { tail -n 20 "$STATE/temporal-ui.log" >&2; die "the Temporal UI exited while starting"; }
    sleep 0.2
  done
  port_busy "$TEMPORAL_UI_PORT" || die "the Temporal UI does not listen after 30s (log: $STATE/temporal-ui.log)"
  log "temporal-ui  ready  http://localhost:$TEMPORAL_UI_PORT"
}

up_cluster() {
  mkdir -p "$STATE"
  local b
  for b in temporal temporal-server temporal-sql-tool temporal-ui-server localhub worker starter simdevice; do
    [ -x "$BIN/$b" ] || die "$BIN/$b is missing: run 'make up-cluster' (it builds what it needs)"
  done
  running temporal && die "the dev server of 'make up' runs: 'make down' first (both serve Temporal on port $TEMPORAL_PORT)"
  load_cluster_env
  TEMPORAL_PORT=$DMFLOW_TEMPORAL_PORT
  TEMPORAL_UI_PORT=$DMFLOW_TEMPORAL_UI_PORT
  MQTT_PORT=$DMFLOW_MQTT_PORT
  HTTPS_PORT=$DMFLOW_HTTPS_PORT
  METRICS_PORT=$DMFLOW_METRICS_PORT
  PG_PORT=${DMFLOW_POSTGRES_PORT:-55432}
  PG_OS_USER=${DMFLOW_POSTGRES_OS_USER:-nobody}
  PG_AS=()
  if [ "$(id -u)" = 0 ]; then
    id "$PG_OS_USER" >/dev/null 2>&1 || die "user $PG_OS_USER does not exist: set DMFLOW_POSTGRES_OS_USER to an unprivileged user to run PostgreSQL as"
    PG_AS=(setpriv --reuid="$PG_OS_USER" --regid="$(id -g "$PG_OS_USER")" --clear-groups --)
  fi

  start_postgresql
  start_temporal_server
  start_temporal_ui
  start_localhub
  write_env "127.0.0.1:$TEMPORAL_PORT" "http://localhost:$TEMPORAL_UI_PORT"
  printf "export TEMPORAL_NAMESPACE='%s'\n" "$TEMPORAL_NAMESPACE" >>"$STATE/env"
  start_worker worker-1 "$METRICS_PORT"
  start_worker worker-2 "$((METRICS_PORT + 1))"
  log "cluster up: Temporal $TEMPORAL_SERVER_VERSION on PostgreSQL, UI http://localhost:$TEMPORAL_UI_PORT, two workers — 'source $STATE/env' to use it by hand, 'make down' to stop"
}

down() {
  # Devices first, then the workers, then what they depend on; the stack
  # up-cluster started as well as the one up started.
  local f n
  for f in "$STATE"/simdevice*.pid; do
    [ -e "$f" ] && stop "$(basename "$f" .pid)"
  done
  for n in worker worker-1 worker-2 temporal-ui localhub temporal temporal-server; do
    stop "$n"
  done
  stop postgresql INT
}

status() {
  local n
  for n in temporal localhub worker temporal-server postgresql temporal-ui worker-1 worker-2; do
    if running "$n"; then
      echo "$n: running (pid $(cat "$STATE/$n.pid"))"
    elif [ "$n" = temporal ] || [ "$n" = localhub ] || [ "$n" = worker ]; then
      echo "$n: stopped"
    fi
  done
}

case "${1:-}" in
  up) up ;;
  up-cluster) up_cluster ;;
  down) down ;;
  status) status ;;
  start) shift; start "$@" ;;
  wait-for) shift; wait_for "$@" ;;
  *) die "usage: scripts/stack.sh up|up-cluster|down|status" ;;
esac
