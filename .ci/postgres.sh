#!/usr/bin/env bash
# Source this file (CI: .ci/run does): installs PostgreSQL if missing (Debian package
# `postgresql`, apt-get), starts the cluster, (re)creates the test role and database with a fresh
# random password, and exports the connection's parts for tests/test_tune_storage.py:
#   GRIDFLEX_TEST_PG_HOST, GRIDFLEX_TEST_PG_PORT, GRIDFLEX_TEST_PG_USER, GRIDFLEX_TEST_PG_DB,
#   GRIDFLEX_TEST_PG_PASSWORD
# Idempotent and quick when everything is already there (about 2 s). Sourced, so it leaves the
# caller's shell options alone (.ci/run sets -euo pipefail itself).
if ! command -v pg_lsclusters >/dev/null 2>&1 || ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq postgresql >/dev/null
fi
cluster=$(pg_lsclusters -h | head -n 1)
if [ -z "$cluster" ]; then
  version=$(ls /usr/lib/postgresql | sort -V | tail -n 1)
  pg_createcluster "$version" main >/dev/null
  cluster=$(pg_lsclusters -h | head -n 1)
fi
read -r pg_version pg_name pg_port pg_status _ <<<"$cluster"
if [ "$pg_status" != "online" ]; then
  pg_ctlcluster "$pg_version" "$pg_name" start
fi
for _ in $(seq 1 50); do
  runuser -u postgres -- pg_isready -q -p "$pg_port" && break
  sleep 0.2
done
GRIDFLEX_TEST_PG_PASSWORD=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
psql_admin() { runuser -u postgres -- psql -p "$pg_port" -v ON_ERROR_STOP=1 -qtAX "$@"; }
if [ "$(psql_admin -c "SELECT 1 FROM pg_roles WHERE rolname='gridflex_test'")" != "1" ]; then
  psql_admin -c "CREATE ROLE gridflex_test LOGIN"
fi
# the password goes in on stdin, never on a command line
printf "ALTER ROLE gridflex_test PASSWORD '%s';\n" "$GRIDFLEX_TEST_PG_PASSWORD" | psql_admin >/dev/null
if [ "$(psql_admin -c "SELECT 1 FROM pg_database WHERE datname='gridflex_test'")" != "1" ]; then
  psql_admin -c "CREATE DATABASE gridflex_test OWNER gridflex_test"
fi
export GRIDFLEX_TEST_PG_HOST=127.0.0.1 GRIDFLEX_TEST_PG_PORT="$pg_port" GRIDFLEX_TEST_PG_USER=gridflex_test \
  GRIDFLEX_TEST_PG_DB=gridflex_test GRIDFLEX_TEST_PG_PASSWORD
