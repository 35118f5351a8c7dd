# The stockflow image: every stockflow process (worker, sink, intake, connectors, simulator, one-off
# commands) from one build. docker-compose.yml runs it; by hand:
#
#   docker build -t stockflow:local .
#   docker run --rm --init -e STOCKFLOW_KAFKA_BOOTSTRAP=host:9092 stockflow:local worker
#
# `--init` (compose: `init: true`) puts a small init as PID 1 that forwards SIGTERM to stockflow, so
# `docker stop` is a clean stop, not a kill after the grace period.

# ---- build: dependencies, then stockflow itself, into /opt/venv --------------------------------
FROM python:3.11-slim-bookworm AS build

# Only used when a dependency has no wheel for the build platform (e.g. some arm64 builds).
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PIP_DISABLE_PIP_VERSION_CHECK=1

# The dependencies from pyproject.toml alone, in their own layer: editing the code does not
# download them again, only changing pyproject.toml does. With the extras compose uses: the
# ClickHouse server driver (no embedded chdb: compose runs a ClickHouse server) and the charts.
COPY pyproject.toml /src/pyproject.toml
RUN python -c "import tomllib; p = tomllib.load(open('/src/pyproject.toml', 'rb'))['project']; \
print('\n'.join(p['dependencies'] + p['optional-dependencies']['clickhouse-server'] + p['optional-dependencies']['charts']))" \
      > /tmp/requirements.txt \
 && pip install --no-cache-dir -r /tmp/requirements.txt

COPY README.md /src/README.md
COPY schemas /src/schemas
COPY streams /src/streams
COPY agents /src/agents
COPY loadtest /src/loadtest
RUN pip install --no-cache-dir --no-deps /src

# ---- runtime: the venv, a non-root user, nothing to compile with ------------------------------
FROM python:3.11-slim-bookworm

# The user's id: build with your own (APP_UID in the compose env file) so files you bind-mount with
# mode 0600, such as the intake's secrets, are readable inside and editable outside.
ARG APP_UID=10001
RUN groupadd --system --gid "$APP_UID" stockflow \
 && useradd --system --uid "$APP_UID" --gid stockflow --home-dir /data --no-create-home \
      --shell /usr/sbin/nologin stockflow \
 && mkdir /data \
 && chown stockflow:stockflow /data

COPY --from=build /opt/venv /opt/venv

# STOCKFLOW_HOME: worker state (RocksDB), the simulator's apps, the connectors' keys; a volume in
# compose. Unbuffered output so `docker logs` shows each line when it is written.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    STOCKFLOW_HOME=/data

USER stockflow
WORKDIR /data
EXPOSE 6066 6067 6068 8080 18090
ENTRYPOINT ["stockflow"]
CMD ["--help"]
