#!/usr/bin/env bash
# A team tracking server on one machine: PostgreSQL (backend store) + `mlflow server` with a
# local artifact root, both on 127.0.0.1 by default. See docs/tracking-server.md.
#
#   scripts/tracking-server.sh start    initialise (first time) and start both; prints the URI
#   scripts/tracking-server.sh stop     stop both (the data stays)
#   scripts/tracking-server.sh status
#
# Settings (environment):
#   MCMETRICS_SERVER_DIR   where the database cluster, artifacts, logs and pid files live
#                          (default: ./tracking-server)
#   MLFLOW_HOST / MLFLOW_PORT   the tracking server's address (default 127.0.0.1:5000)
#   MCMETRICS_PG_DATA      the PostgreSQL cluster's folder (default: $MCMETRICS_SERVER_DIR/postgres);
#                          run as root, the `postgres` user must be able to reach it
#   PGPORT                 PostgreSQL's port, on 127.0.0.1 only (default 5433, beside a system 5432)
#   PG_BIN                 folder of initdb/pg_ctl (default: the newest /usr/lib/postgresql/*/bin)
#   MLFLOW_WORKERS         server worker processes (default 2)
#
# Needs Debian's `postgresql` package (initdb, pg_ctl; the system service is not used) and the
# project's `[server]` extra (`pip install -e ".[server]"`: the psycopg 3 driver).
set -euo pipefail

command_name=${1:-}
server_dir=$(mkdir -p "${MCMETRICS_SERVER_DIR:-./tracking-server}" && cd "${MCMETRICS_SERVER_DIR:-./tracking-server}" && pwd)
host=${MLFLOW_HOST:-127.0.0.1}
port=${MLFLOW_PORT:-5000}
pg_port=${PGPORT:-5433}
workers=${MLFLOW_WORKERS:-2}
pg_data=${MCMETRICS_PG_DATA:-$server_dir/postgres}
pg_bin=${PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)}
python=${PYTHON:-python3}

fail() { echo "tracking-server: $*" >&2; exit 1; }

# PostgreSQL refuses to run as root: run its tools as the `postgres` user then.
as_db_owner() {
  if [ "$(id -u)" -eq 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

start_postgres() {
  [ -x "$pg_bin/initdb" ] || fail "PostgreSQL not found (PG_BIN=$pg_bin): install Debian's 'postgresql' package."
  if [ ! -f "$pg_data/PG_VERSION" ]; then
    mkdir -p "$pg_data"
    if [ "$(id -u)" -eq 0 ]; then
      chown postgres: "$pg_data"
      runuser -u postgres -- test -w "$pg_data" \
        || fail "the postgres user cannot reach $pg_data: set MCMETRICS_PG_DATA to a folder it can reach."
    fi
    # Trust on loopback only: the cluster listens on 127.0.0.1 and nowhere else.
    as_db_owner "$pg_bin/initdb" --pgdata "$pg_data" --username mlflow --auth trust --encoding UTF8 >/dev/null
  fi
  if ! as_db_owner "$pg_bin/pg_ctl" status --pgdata "$pg_data" >/dev/null 2>&1; then
    as_db_owner "$pg_bin/pg_ctl" start --pgdata "$pg_data" --wait --log "$pg_data/server.log" \
      --options "-c listen_addresses=127.0.0.1 -c port=$pg_port -k /tmp" >/dev/null \
      || fail "PostgreSQL did not start; see $pg_data/server.log"
  fi
  if ! as_db_owner "$pg_bin/psql" --host 127.0.0.1 --port "$pg_port" --username mlflow --dbname postgres \
      --tuples-only --command "SELECT 1 FROM pg_database WHERE datname = 'mlflow'" | grep -q 1; then
    as_db_owner "$pg_bin/createdb" --host 127.0.0.1 --port "$pg_port" --username mlflow mlflow
  fi
}

start_mlflow() {
  local uri="http://$host:$port"
  if [ -f "$server_dir/mlflow.pid" ] && kill -0 "$(cat "$server_dir/mlflow.pid")" 2>/dev/null; then
    echo "export MLFLOW_TRACKING_URI=$uri"
    return
  fi
  "$python" -c "import psycopg" 2>/dev/null || fail "the psycopg driver is missing: pip install -e \".[server]\""
  mkdir -p "$server_dir/artifacts"
  # `postgresql+psycopg` names the driver explicitly: SQLAlchemy 2.0 maps a bare
  # `postgresql://` to psycopg2, 2.1 to psycopg 3.
  setsid "$python" -m mlflow server \
    --backend-store-uri "postgresql+psycopg://mlflow@127.0.0.1:$pg_port/mlflow" \
    --artifacts-destination "$server_dir/artifacts" \
    --host "$host" --port "$port" --workers "$workers" \
    >>"$server_dir/mlflow.log" 2>&1 &
  echo $! >"$server_dir/mlflow.pid"
  for _ in $(seq 1 180); do
    if "$python" -c "import urllib.request, sys; urllib.request.urlopen(sys.argv[1], timeout=2)" "$uri/health" 2>/dev/null; then
      echo "export MLFLOW_TRACKING_URI=$uri"
      return
    fi
    kill -0 "$(cat "$server_dir/mlflow.pid")" 2>/dev/null || break
    sleep 0.5
  done
  tail -n 30 "$server_dir/mlflow.log" >&2
  fail "mlflow server did not come up on $uri; see $server_dir/mlflow.log"
}

stop_all() {
  if [ -f "$server_dir/mlflow.pid" ]; then
    # The server was started in its own session: stop its workers with it.
    kill -TERM -- "-$(cat "$server_dir/mlflow.pid")" 2>/dev/null || true
    rm -f "$server_dir/mlflow.pid"
  fi
  if [ -f "$pg_data/PG_VERSION" ]; then
    as_db_owner "$pg_bin/pg_ctl" stop --pgdata "$pg_data" --mode fast --wait >/dev/null 2>&1 || true
  fi
}

case "$command_name" in
  start) start_postgres; start_mlflow ;;
  stop) stop_all ;;
  status)
    as_db_owner "$pg_bin/pg_ctl" status --pgdata "$pg_data" || true
    if [ -f "$server_dir/mlflow.pid" ] && kill -0 "$(cat "$server_dir/mlflow.pid")" 2>/dev/null; then
      echo "mlflow server running (pid $(cat "$server_dir/mlflow.pid")) on http://$host:$port"
    else
      echo "mlflow server not running"
    fi
    ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
