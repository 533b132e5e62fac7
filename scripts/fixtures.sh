#!/usr/bin/env bash
# Makes the test models and datasets (scripts/make_test_models.py) on the local MLflow servers,
# once: it does nothing when the servers still have them.
#   scripts/fixtures.sh [--big-rows N]
# writes .run/fixtures on "kmj" (port 5000) and .run/fixtures-auth on "kmj-auth" (port 5001;
# skipped with KMJ_FIXTURES_AUTH=0).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
py="$KMJ_ROOT/.venv/bin/python"
log="$KMJ_RUN/fixtures.log"

make_on() {
  local out=$1
  shift
  if ! "$py" "$KMJ_ROOT/scripts/make_test_models.py" --out "$out" "$@" >"$log" 2>&1; then
    tail -30 "$log" >&2
    die "making the test models failed (log: $log)"
  fi
  grep -E '^fixtures' "$log" >&2 || true
}

MLFLOW_TRACKING_URI=http://127.0.0.1:5000 make_on "$KMJ_RUN/fixtures" "$@"
[ "${KMJ_FIXTURES_AUTH:-1}" = 0 ] && exit 0
MLFLOW_TRACKING_URI=http://127.0.0.1:5001 MLFLOW_TRACKING_USERNAME=admin \
  MLFLOW_TRACKING_PASSWORD="${KMJ_MLFLOW_ADMIN_PASSWORD:-kmj-test-admin-pw}" \
  make_on "$KMJ_RUN/fixtures-auth" --minimal
