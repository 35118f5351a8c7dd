#!/usr/bin/env bash
# The main job on the embedded defaults: local Kafka started for you, embedded ClickHouse.
set -euo pipefail
. "$(dirname "$0")/setup.sh"
exec stockflow demo "$@"
