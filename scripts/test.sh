#!/usr/bin/env bash
# Installs what the tests need, starts a Kafka broker and a ClickHouse server in a throwaway
# folder, runs lint, types and the whole suite, and stops what it started (even on failure).
set -euo pipefail
export STOCKFLOW_NEED_CLICKHOUSE_SERVER=1
. "$(dirname "$0")/setup.sh"

# Services for the suite, on ports a developer's `stockflow dev up` does not use.
STOCKFLOW_HOME="$(mktemp -d -t stockflow-test.XXXXXX)"
export STOCKFLOW_HOME
export STOCKFLOW_KAFKA_PORT="${STOCKFLOW_TEST_KAFKA_PORT:-29092}"
export STOCKFLOW_KAFKA_CONTROLLER_PORT="${STOCKFLOW_TEST_KAFKA_CONTROLLER_PORT:-29093}"
export STOCKFLOW_CLICKHOUSE_SERVER_PORT="${STOCKFLOW_TEST_CLICKHOUSE_PORT:-29000}"
unset STOCKFLOW_KAFKA_BOOTSTRAP
cleanup() {
  stockflow dev down >/dev/null 2>&1 || true
  rm -rf "$STOCKFLOW_HOME"
}
trap cleanup EXIT

stockflow dev up --clickhouse-server
export STOCKFLOW_TEST_KAFKA_BOOTSTRAP="127.0.0.1:${STOCKFLOW_KAFKA_PORT}"
export STOCKFLOW_TEST_CLICKHOUSE_URL="clickhouse://127.0.0.1:${STOCKFLOW_CLICKHOUSE_SERVER_PORT}"

echo "== ruff"; ruff check streams agents loadtest tests
echo "== mypy"; mypy streams agents loadtest
echo "== pytest"
# Two processes, a test file each at a time: most broker tests wait on the broker and the workers they
# start, so two files at once finish the suite in about two thirds of the time on two cores.
python -m pytest -q -n 2 --dist loadfile "$@"
