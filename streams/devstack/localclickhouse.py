"""A ClickHouse server on 127.0.0.1 for the server backend, from the installed package.

Runs the ``clickhouse-server`` binary (Debian's package, or any newer one on PATH) as a user
process with a generated config under ``<home>/clickhouse-server`` - no system service is touched.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from streams.devstack import procs
from streams.settings import Settings

_CONFIG = """<?xml version="1.0"?>
<yandex>
  <logger><level>warning</level><log>{root}/server.log</log><errorlog>{root}/error.log</errorlog></logger>
  <listen_host>127.0.0.1</listen_host>
  <tcp_port>{tcp_port}</tcp_port>
  <http_port>{http_port}</http_port>
  <path>{root}/data/</path>
  <tmp_path>{root}/tmp/</tmp_path>
  <user_files_path>{root}/user_files/</user_files_path>
  <format_schema_path>{root}/format_schemas/</format_schema_path>
  <users_config>{root}/users.xml</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <mark_cache_size>268435456</mark_cache_size>
  <max_concurrent_queries>50</max_concurrent_queries>
</yandex>
"""

_USERS = """<?xml version="1.0"?>
<yandex>
  <profiles><default><max_memory_usage>4000000000</max_memory_usage></default></profiles>
  <users><default><password></password>
    <networks><ip>127.0.0.1</ip><ip>::1</ip></networks>
    <profile>default</profile><quota>default</quota></default></users>
  <quotas><default></default></quotas>
</yandex>
"""


@dataclass
class LocalClickHouseServer:
    settings: Settings
    tcp_port: int = 0  # 0: the configured clickhouse_server_port
    http_port: int = 0  # 0: next to the native port

    def __post_init__(self) -> None:
        self.tcp_port = self.tcp_port or self.settings.clickhouse_server_port
        self.http_port = self.http_port or self.tcp_port + 1

    @property
    def root(self) -> Path:
        return self.settings.home_dir / "clickhouse-server"

    @property
    def pid_file(self) -> Path:
        return self.root / "server.pid"

    @property
    def url(self) -> str:
        return f"clickhouse://127.0.0.1:{self.tcp_port}"

    def binary(self) -> str:
        for name in ("clickhouse-server", "clickhouse"):
            path = shutil.which(name) or (f"/usr/sbin/{name}" if Path(f"/usr/sbin/{name}").exists() else None)
            if path:
                return path
        raise RuntimeError(
            "clickhouse-server is not installed (Debian: apt-get install clickhouse-server); "
            "the embedded backend (STOCKFLOW_CLICKHOUSE_URL=chdb://) needs nothing"
        )

    def up(self, timeout_s: float = 60.0) -> str:
        if (pid := procs.read_pid(self.pid_file)) is not None:
            return f"ClickHouse server already running (pid {pid}) at {self.url}"
        binary = self.binary()
        self.root.mkdir(parents=True, exist_ok=True)
        config = self.root / "config.xml"
        config.write_text(_CONFIG.format(root=self.root, tcp_port=self.tcp_port, http_port=self.http_port))
        (self.root / "users.xml").write_text(_USERS)
        cmd = [binary] if binary.endswith("-server") else [binary, "server"]
        pid = procs.start([*cmd, f"--config-file={config}"], self.root / "stdout.log", self.pid_file)
        if not procs.wait_for_port("127.0.0.1", self.tcp_port, timeout_s, pid):
            procs.stop(self.pid_file)
            log = self.root / "error.log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"ClickHouse server did not start within {timeout_s:.0f}s:\n{tail}")
        return f"ClickHouse server started, pid {pid}, at {self.url}"

    def down(self) -> bool:
        return procs.stop(self.pid_file, timeout_s=30)
