#!/bin/sh
# setup.sh: dmflow's namespace and search attributes on a Temporal cluster,
# through the operator API, once the frontend serves. Idempotent: what exists
# is kept, so it runs on every start. Run by the temporal-setup service of
# docker-compose.yml (admin-tools image) and by `make up-cluster` (the
# Temporal CLI built into .bin/); docs/deployment.md gives the same commands
# for a cluster of your own.
#
# Environment (deploy/cluster.env has the values): TEMPORAL_ADDRESS,
# TEMPORAL_NAMESPACE, DMFLOW_NAMESPACE_RETENTION, DMFLOW_SEARCH_ATTRIBUTES
# (Name=Type, space-separated).
set -eu

: "${TEMPORAL_ADDRESS:?set TEMPORAL_ADDRESS to the Temporal frontend, host:port}"
: "${TEMPORAL_NAMESPACE:?set TEMPORAL_NAMESPACE (deploy/cluster.env)}"
: "${DMFLOW_NAMESPACE_RETENTION:?set DMFLOW_NAMESPACE_RETENTION (deploy/cluster.env)}"
: "${DMFLOW_SEARCH_ATTRIBUTES:?set DMFLOW_SEARCH_ATTRIBUTES (deploy/cluster.env)}"
ns="--address $TEMPORAL_ADDRESS --namespace $TEMPORAL_NAMESPACE"
err=$(mktemp)
trap 'rm -f "$err"' EXIT

# retry SECONDS WHAT CMD...: runs CMD every 2 s until it succeeds; after
# SECONDS it prints CMD's last error and fails.
retry() {
  secs=$1 what=$2
  shift 2
  i=0
  until "$@" >/dev/null 2>"$err"; do
    i=$((i + 2))
    if [ "$i" -ge "$secs" ]; then
      cat "$err" >&2
      echo "setup.sh: $what after ${secs}s" >&2
      return 1
    fi
    sleep 2
  done
}

retry 180 "Temporal at $TEMPORAL_ADDRESS is not serving" temporal operator cluster health --address "$TEMPORAL_ADDRESS"

# The namespace: created only when the server says it does not exist; any
# other error (the frontend still starting, a network fault) is retried.
i=0
# shellcheck disable=SC2086
until temporal operator namespace describe $ns >/dev/null 2>"$err"; do
  if grep -qi 'not found' "$err"; then
    # shellcheck disable=SC2086
    if temporal operator namespace create $ns --retention "$DMFLOW_NAMESPACE_RETENTION" 2>"$err"; then
      echo "namespace $TEMPORAL_NAMESPACE: created, retention $DMFLOW_NAMESPACE_RETENTION"
    elif ! grep -qi 'already' "$err"; then
      cat "$err" >&2
      exit 1
    fi
  fi
  i=$((i + 2))
  if [ "$i" -ge 120 ]; then
    cat "$err" >&2
    echo "setup.sh: namespace $TEMPORAL_NAMESPACE is not usable after 120s" >&2
    exit 1
  fi
  sleep 2
done

# A new namespace reaches the frontend's cache within seconds.
# shellcheck disable=SC2086
retry 120 "namespace $TEMPORAL_NAMESPACE lists no search attributes" temporal operator search-attribute list $ns
missing() {
  # shellcheck disable=SC2086
  have=$(temporal operator search-attribute list $ns)
  out=
  for sa in $DMFLOW_SEARCH_ATTRIBUTES; do
    printf '%s\n' "$have" | grep -qw -- "${sa%%=*}" || out="$out $sa"
  done
  echo "$out"
}
for sa in $(missing); do
  # shellcheck disable=SC2086
  temporal operator search-attribute create $ns --name "${sa%%=*}" --type "${sa#*=}" 2>"$err" || grep -qi 'already' "$err" || {
    cat "$err" >&2
    exit 1
  }
  echo "search attribute ${sa%%=*}: created"
done
# Every attribute listed before a worker may upsert it.
i=0
while [ -n "$(missing)" ]; do
  i=$((i + 1))
  [ "$i" -lt 60 ] || { echo "setup.sh: search attributes$(missing) still missing after 60s" >&2; exit 1; }
  sleep 1
done
echo "namespace $TEMPORAL_NAMESPACE ready: search attributes $DMFLOW_SEARCH_ATTRIBUTES"
