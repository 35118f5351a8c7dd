#!/usr/bin/env bash
# Sourced by demo.sh and test.sh: a project virtualenv with stockflow installed, plus the
# Debian packages the local stack needs when they are missing (Java and Maven for the Kafka
# broker; clickhouse-server, chromium for the dashboard page check and docker-compose to validate
# docker-compose.yml, only with STOCKFLOW_NEED_CLICKHOUSE_SERVER=1, which the test script sets).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

python="${PYTHON:-python3.11}"
command -v "$python" >/dev/null || python=python3

missing=()
command -v java >/dev/null || missing+=(openjdk-17-jre-headless)
command -v mvn >/dev/null || missing+=(maven)
if [ "${STOCKFLOW_NEED_CLICKHOUSE_SERVER:-0}" = 1 ] && ! command -v clickhouse-server >/dev/null \
   && [ ! -x /usr/sbin/clickhouse-server ]; then
  missing+=(clickhouse-server)
fi
if [ "${STOCKFLOW_NEED_CLICKHOUSE_SERVER:-0}" = 1 ] && ! command -v chromium >/dev/null; then
  missing+=(chromium)
fi
if [ "${STOCKFLOW_NEED_CLICKHOUSE_SERVER:-0}" = 1 ] && ! command -v docker-compose >/dev/null; then
  missing+=(docker-compose)
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing Debian packages: ${missing[*]}"
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
# Every extra (embedded ClickHouse, the server driver, the charts): the demo and the tests use all of them.
if ! python -c "import streams, faust, chdb, clickhouse_driver, plotly" 2>/dev/null \
   || [ pyproject.toml -nt .venv/.installed ]; then
  pip install -q --upgrade pip
  pip install -q -e ".[dev,all]"
  touch .venv/.installed
fi
