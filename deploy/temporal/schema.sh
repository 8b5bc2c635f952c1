#!/bin/sh
# schema.sh: creates Temporal's two databases on PostgreSQL and brings both
# schemas to the server release whose schema files are in TEMPORAL_SCHEMA_DIR.
# Idempotent: an existing database is kept, a schema already at the release
# is left alone, an older one is migrated (how an upgrade runs). Run by the
# temporal-schema service of docker-compose.yml (admin-tools image) and by
# `make up-cluster` (the temporal-sql-tool built into .bin/).
#
# Environment: SQL_PLUGIN (postgres12), SQL_HOST, SQL_PORT, SQL_USER,
# SQL_PASSWORD (read by temporal-sql-tool itself, never on a command line),
# TEMPORAL_SCHEMA_DIR (default /etc/temporal/schema, the admin-tools image's).
set -eu

: "${SQL_HOST:?set SQL_HOST to the PostgreSQL host}"
: "${SQL_USER:?set SQL_USER to the PostgreSQL user Temporal connects as}"
: "${SQL_PASSWORD:?set SQL_PASSWORD to that user's password}"
export SQL_PLUGIN="${SQL_PLUGIN:-postgres12}"
schema="${TEMPORAL_SCHEMA_DIR:-/etc/temporal/schema}/postgresql/v12"
[ -d "$schema/temporal/versioned" ] || {
  echo "schema.sh: no schema files in $schema: set TEMPORAL_SCHEMA_DIR to a Temporal release's schema directory" >&2
  exit 1
}

for db in temporal temporal_visibility; do
  case $db in
    temporal) dir=$schema/temporal/versioned ;;
    *) dir=$schema/visibility/versioned ;;
  esac
  temporal-sql-tool --db "$db" create
  temporal-sql-tool --db "$db" setup-schema -v 0.0
  temporal-sql-tool --db "$db" update-schema -d "$dir"
done
