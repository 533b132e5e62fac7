#!/usr/bin/env bash
# Start, stop or check an MLflow tracking server for tests, benchmarks and the demo: MLflow 3 from
# PyPI in .venv, SQLite backend store and artifact proxy under .run/mlflow-NAME, listening on
# 127.0.0.1 only.
#
#   scripts/mlflow.sh start [NAME PORT AUTH]  # idempotent: leaves a server that already answers alone
#   scripts/mlflow.sh stop  [NAME]
#   scripts/mlflow.sh venv                    # only create/update .venv
#
# The default server, "kmj" on port 5000, runs without authentication. AUTH=basic runs MLflow's
# basic-auth app (admin user "admin", password $KMJ_MLFLOW_ADMIN_PASSWORD or a fixed test one):
# `make test` starts "kmj-auth" on port 5001 that way for the authentication tests. Basic auth
# checks a password hash on every request unless it remembers a good one: MLflow's
# auth_cache_ttl_seconds, $KMJ_MLFLOW_AUTH_CACHE_TTL_S (make bench-mlflow-auth measures 0 and 60).
# Default 0, MLflow's own default, so the authentication tests see MLflow's own answers: with the
# cache on, MLflow 3.17.2 answers a Bearer token with 500 where it otherwise answers 401 (the
# cluster's MLflow has it on, docs/deploy.md). The default server without authentication carries
# the rest of the tests and the benchmarks.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

cmd=${1:-start}
name=${2:-kmj}
port=${3:-5000}
auth=${4:-none}
base="$KMJ_RUN/mlflow-$name"
venv="$KMJ_ROOT/.venv"
admin_user=admin
admin_password=${KMJ_MLFLOW_ADMIN_PASSWORD:-kmj-test-admin-pw}
auth_cache_ttl_s=${KMJ_MLFLOW_AUTH_CACHE_TTL_S:-0}
[[ $auth_cache_ttl_s =~ ^[0-9]+$ ]] || die "KMJ_MLFLOW_AUTH_CACHE_TTL_S: \"$auth_cache_ttl_s\" must be a whole number of seconds"

ensure_venv() {
  local req="$KMJ_ROOT/scripts/requirements.txt" stamp="$venv/.requirements"
  if [ -x "$venv/bin/python" ] && cmp -s "$req" "$stamp"; then return 0; fi
  say "installing MLflow and the model toolchain from PyPI into .venv"
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$req"
  cp "$req" "$stamp"
}

health() {
  curl -fsS --max-time 2 "http://127.0.0.1:$port/health" 2>/dev/null | grep -q OK
}

case "$cmd" in
  venv)
    ensure_venv
    ;;
  start)
    ensure_venv
    if health; then
      say "MLflow already answers on 127.0.0.1:$port"
      exit 0
    fi
    mkdir -p "$base/artifacts"
    app_args=()
    auth_env=()
    if [ "$auth" = basic ]; then
      cat >"$base/basic_auth.ini" <<INI
[mlflow]
default_permission = EDIT
database_uri = sqlite:///$base/auth.db
admin_username = $admin_user
admin_password = $admin_password
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
auth_cache_ttl_seconds = $auth_cache_ttl_s
INI
      app_args=(--app-name basic-auth)
      # The basic-auth app signs CSRF tokens with a static key; one random key per checkout.
      [ -s "$base/secret_key" ] || head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$base/secret_key"
      auth_env=(MLFLOW_AUTH_CONFIG_PATH="$base/basic_auth.ini" MLFLOW_FLASK_SERVER_SECRET_KEY="$(cat "$base/secret_key")")
    fi
    say "starting MLflow \"$name\" on 127.0.0.1:$port (auth: $auth, backend $base/mlflow.db)"
    # MLflow 3's job execution (GenAI scorers, trace rollups), unused here, starts seven huey
    # consumers of about 230 MB each beside the server: off, as in manifests/mlflow.yaml.
    env "${auth_env[@]}" MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false \
      nohup "$venv/bin/mlflow" server \
        "${app_args[@]}" \
        --backend-store-uri "sqlite:///$base/mlflow.db" \
        --serve-artifacts --artifacts-destination "$base/artifacts" \
        --host 127.0.0.1 --port "$port" --workers "${KMJ_MLFLOW_WORKERS:-4}" \
        >"$base/server.log" 2>&1 &
    echo $! >"$base/pid"
    for ((i = 0; i < 600; i++)); do
      health && break
      kill -0 "$(cat "$base/pid")" 2>/dev/null || { tail -20 "$base/server.log" >&2; die "MLflow exited during start-up"; }
      sleep 0.2
    done
    health || { tail -20 "$base/server.log" >&2; die "MLflow did not answer /health within 120 s"; }
    say "MLflow \"$name\" is up: http://127.0.0.1:$port"
    ;;
  stop)
    if [ -f "$base/pid" ]; then
      pid=$(cat "$base/pid")
      pkill -TERM -P "$pid" 2>/dev/null || true
      kill -TERM "$pid" 2>/dev/null || true
      rm -f "$base/pid"
    fi
    ;;
  *)
    die "unknown command '$cmd' (start, stop, venv)"
    ;;
esac
