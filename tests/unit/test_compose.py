"""docker-compose.yml, the Dockerfile and the Grafana provisioning, read the way Docker would run them.

There is no Docker engine here: these tests read the files (PyYAML) and check what a broken file shows
only at run time - a ``STOCKFLOW_*`` name no setting reads, a health check on a port the process does
not serve, a listener host clients cannot reach, a password with a default, a Grafana variable pasted
raw into SQL - and, where Debian's ``docker-compose`` is installed (``scripts/setup.sh`` installs it for
the test script), that ``docker-compose config`` accepts the file.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml

from agents.analytics import queries
from streams.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
ENV_EXAMPLE = ROOT / "deploy" / "stockflow.env.example"
DATASOURCE = ROOT / "deploy" / "grafana" / "provisioning" / "datasources" / "clickhouse.yaml"
DASHBOARD_JSON = ROOT / "deploy" / "grafana" / "dashboards" / "stockflow.json"
CLICKHOUSE_USERS = ROOT / "deploy" / "clickhouse" / "users.d" / "grafana.xml"
STOCKFLOW_IMAGE = "stockflow:local"

# What each long-running stockflow process serves its health on: (host setting, port setting, path).
# A new stockflow service must be named here or in ONE_SHOT, so it cannot go unchecked.
SERVES = {
    ("worker",): ("web_host", "web_port", "/readyz"),
    ("sink",): ("web_host", "sink_port", "/readyz"),
    ("connectors", "run"): ("web_host", "connectors_port", "/readyz"),
    ("intake",): ("intake_host", "intake_port", "/healthz"),
    ("sim", "serve"): ("sim_host", "sim_port", "/_sim/healthz"),
}
ONE_SHOT = {("topics", "create")}

# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?error}, ${NAME?error}; $$ is a literal $.
_VARIABLE = re.compile(r"\$\$|\$\{(\w+)(?:(:?[-?])([^}]*))?\}")


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    return loaded


def services() -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose()["services"]
    return found


def stockflow_services() -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in services().items() if svc.get("image") == STOCKFLOW_IMAGE}


def env_example() -> dict[str, str]:
    pairs = {}
    for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            pairs[name.strip()] = value.strip()
    return pairs


def filled_env() -> dict[str, str]:
    """The env example as a user fills it in: every password given a value of its own."""
    filled = env_example()
    for i, name in enumerate(sorted(filled)):
        if name.endswith("PASSWORD"):
            filled[name] = f"secret{i}"
    return filled


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's variable substitution, for the forms this file uses."""

    def one(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name, op, arg = m.group(1), m.group(2) or "", m.group(3) or ""
        value = env.get(name)
        unset = value is None or (op.startswith(":") and value == "")
        if op.endswith("?") and unset:
            raise KeyError(f"{name}: {arg}")
        if op.endswith("-") and unset:
            return arg
        return value or ""

    return _VARIABLE.sub(one, text)


def environment(svc: dict[str, Any]) -> dict[str, str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def command(svc: dict[str, Any]) -> tuple[str, ...]:
    cmd = svc.get("command") or ()
    return tuple(cmd.split() if isinstance(cmd, str) else cmd)


def healthcheck_text(svc: dict[str, Any]) -> str:
    test = (svc.get("healthcheck") or {}).get("test") or ""
    return test if isinstance(test, str) else " ".join(test)


def ports(svc: dict[str, Any]) -> list[tuple[str, int, int]]:
    """(host address, host port, container port) of every published port (short syntax)."""
    out = []
    for spec in svc.get("ports") or ():
        assert isinstance(spec, str), f"use the short syntax 'ADDRESS:HOST:CONTAINER', not {spec!r}"
        parts = spec.split("/")[0].split(":")
        assert len(parts) == 3, f"{spec!r}: publish as 127.0.0.1:HOST:CONTAINER"
        out.append((parts[0], int(parts[1]), int(parts[2])))
    return out


def service_settings(svc: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The Settings a service's process builds from its environment (and the image's)."""
    for name in list(os.environ):
        if name.startswith("STOCKFLOW_"):
            monkeypatch.delenv(name)
    filled = filled_env()
    for name, value in {**dockerfile_env(), **environment(svc)}.items():
        if name.startswith("STOCKFLOW_"):
            monkeypatch.setenv(name, interpolate(value, filled))
    return Settings()


def dockerfile_env() -> dict[str, str]:
    """The ENV of the Dockerfile's last stage (the image the services run)."""
    last_stage = DOCKERFILE.read_text(encoding="utf-8").rsplit("\nFROM ", 1)[1]
    joined = re.sub(r"\\\n\s*", " ", last_stage)
    env: dict[str, str] = {}
    for line in joined.splitlines():
        if line.startswith("ENV "):
            env.update(dict(re.findall(r"(\w+)=(\S+)", line)))
    return env


SETTING_NAMES = {f"STOCKFLOW_{name.upper()}" for name in Settings.model_fields}


# ---- the stockflow services ---------------------------------------------------------------------


def test_every_stockflow_variable_is_a_setting_and_its_value_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    named = {
        (where, name)
        for where, env in [("Dockerfile", dockerfile_env())] + [(s, environment(v)) for s, v in services().items()]
        for name in env
        if name.startswith("STOCKFLOW_")
    }
    assert named, "no STOCKFLOW_ variable found: did the compose file move?"
    unknown = sorted(f"{where}: {name}" for where, name in named if name not in SETTING_NAMES)
    assert not unknown, f"no field of streams.settings.Settings reads these (a typo is silently ignored): {unknown}"
    for svc in stockflow_services().values():
        service_settings(svc, monkeypatch)  # a value the setting refuses fails here, not at `docker compose up`


def test_each_stockflow_process_is_health_checked_on_what_it_serves(monkeypatch: pytest.MonkeyPatch) -> None:
    found = stockflow_services()
    assert {"worker", "sink", "intake", "simulator", "connectors", "topics"} <= set(found)
    for name, svc in found.items():
        cmd = command(svc)
        assert cmd in SERVES or cmd in ONE_SHOT, f"{name}: add {cmd} to SERVES or ONE_SHOT in this test"
        assert svc.get("init") is True, f"{name}: `init: true`, or SIGTERM never reaches stockflow"
        if cmd in ONE_SHOT:
            assert svc.get("restart") == "no" and "healthcheck" not in svc, name
            continue
        host_field, port_field, path = SERVES[cmd]
        settings = service_settings(svc, monkeypatch)
        port = getattr(settings, port_field)
        assert f"http://127.0.0.1:{port}{path}" in healthcheck_text(svc), f"{name}: check {path} on :{port}"
        assert getattr(settings, host_field) == "0.0.0.0", f"{name}: listens on 127.0.0.1 of its own container"
        assert [p[2] for p in ports(svc)] == [port], f"{name}: publish the port it serves, {port}"
        assert svc.get("restart") in {"unless-stopped", "always", "on-failure"}, f"{name}: restart it when it exits"


def test_the_image_is_built_once_and_nothing_is_installed_at_start() -> None:
    for name, svc in services().items():
        run = " ".join([*command(svc), *(svc.get("entrypoint") or ()), healthcheck_text(svc)])
        assert "pip " not in run and "pip3 " not in run, f"{name} installs packages when it starts"
    for name, svc in stockflow_services().items():
        assert svc.get("build", {}).get("context") == ".", f"{name}: built from the Dockerfile"
        binds = [v for v in svc.get("volumes") or () if isinstance(v, str) and v.startswith(".")]
        binds += [v["source"] for v in svc.get("volumes") or () if isinstance(v, dict) and v.get("type") == "bind"]
        assert all(b.startswith("./deploy/") for b in binds), f"{name} mounts the checkout: {binds}"


def test_the_dockerfile_runs_stockflow_as_a_user_in_exec_form() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    last_stage = text.rsplit("\nFROM ", 1)[1]
    assert re.search(r"^ENTRYPOINT \[\"stockflow\"\]$", last_stage, re.M), 'exec-form ENTRYPOINT ["stockflow"]'
    users = re.findall(r"^USER (\S+)$", last_stage, re.M)
    assert users and users[-1] not in {"root", "0"}, "the image runs as a user of its own, not root"
    assert dockerfile_env().get("PYTHONUNBUFFERED") == "1"
    ignored = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    assert ignored[next(i for i, line in enumerate(ignored) if line.strip() and not line.startswith("#"))] == "*", (
        ".dockerignore starts from nothing (the env file and deploy/secrets/ stay out of the build context)"
    )


# ---- wiring between services --------------------------------------------------------------------


def test_ports_are_published_on_localhost_clear_of_the_local_stack() -> None:
    defaults = Settings.model_fields
    local = {defaults[f].default for f in ("kafka_port", "kafka_controller_port", "clickhouse_server_port")}
    test_script = (ROOT / "scripts" / "test.sh").read_text(encoding="utf-8")
    local |= {int(p) for p in re.findall(r"STOCKFLOW_TEST_\w+_PORT:-(\d+)", test_script)}
    seen: dict[int, str] = {}
    for name, svc in services().items():
        for address, host_port, _ in ports(svc):
            assert address == "127.0.0.1", f"{name} publishes :{host_port} on every interface"
            assert host_port not in local, f"{name}: :{host_port} is taken by `stockflow dev up` or the test script"
            assert host_port not in seen, f"{name} and {seen.get(host_port)} both publish :{host_port}"
            seen[host_port] = name


def test_kafka_advertises_addresses_its_clients_can_reach() -> None:
    kafka = environment(services()["kafka"])
    advertised = dict(re.findall(r"(\w+)://([^,]+)", kafka["KAFKA_ADVERTISED_LISTENERS"]))
    listeners = dict(re.findall(r"(\w+)://([^,]+)", kafka["KAFKA_LISTENERS"]))
    assert set(advertised) | {kafka["KAFKA_CONTROLLER_LISTENER_NAMES"]} == set(listeners)
    published = {host_port: container for _, host_port, container in ports(services()["kafka"])}
    internal = []
    for name, address in advertised.items():
        host, port = address.rsplit(":", 1)
        assert listeners[name].endswith(f":{port}"), f"{name} advertises :{port} but listens on {listeners[name]}"
        if host == "127.0.0.1":  # for clients on the host: published on the same port
            assert published.get(int(port)) == int(port), f"{name}: publish 127.0.0.1:{port}:{port}"
        else:
            assert host in services(), f"{name} advertises {host}, which no container resolves"
            internal.append(address)
    # A client on the host is sent to the advertised address: each published port must advertise 127.0.0.1.
    for_host = {int(a.rsplit(":", 1)[1]) for a in advertised.values() if a.startswith("127.0.0.1:")}
    assert for_host == set(published) and for_host, "advertise each published listener as 127.0.0.1:<its port>"
    assert kafka["KAFKA_INTER_BROKER_LISTENER_NAME"] in advertised
    for name, svc in stockflow_services().items():
        bootstrap = environment(svc).get("STOCKFLOW_KAFKA_BOOTSTRAP")
        if command(svc) != ("sim", "serve"):
            assert bootstrap in internal, f"{name}: STOCKFLOW_KAFKA_BOOTSTRAP={bootstrap}, not one of {internal}"


def test_services_wait_for_what_they_need_to_be_healthy() -> None:
    every = services()
    for name, svc in every.items():
        needs = svc.get("depends_on") or {}
        assert isinstance(needs, dict), f"{name}: depends_on with a condition, not a list (started is not ready)"
        for other, how in needs.items():
            condition = how.get("condition")
            if condition == "service_healthy":
                assert "healthcheck" in every[other], f"{name} waits for {other}, which has no health check"
            else:
                assert condition == "service_completed_successfully", f"{name} -> {other}: {condition}"
                assert every[other].get("restart") == "no", f"{other} is one-shot"
    for name in ("worker", "sink", "intake", "connectors"):
        assert every[name]["depends_on"].get("topics", {}).get("condition") == "service_completed_successfully"
    assert every["sink"]["depends_on"]["clickhouse"]["condition"] == "service_healthy"


def test_passwords_come_from_the_env_file_and_have_no_default() -> None:
    text = COMPOSE.read_text(encoding="utf-8")
    example = env_example()
    used = {m.group(1): m.group(2) or "" for m in _VARIABLE.finditer(text) if m.group(1)}
    assert set(used) <= set(example) | {"COMPOSE_PROFILES"}, f"say in {ENV_EXAMPLE.name}: {set(used) - set(example)}"
    secrets = {name for name in used if "PASSWORD" in name}
    assert secrets == {"CLICKHOUSE_PASSWORD", "GRAFANA_CLICKHOUSE_PASSWORD", "GRAFANA_ADMIN_PASSWORD"}
    for name in secrets:
        assert used[name] == ":?", f"${{{name}}} must be required (`:?`), never defaulted"
        assert example[name] == "", f"{ENV_EXAMPLE.name} ships no password for {name}"
    with pytest.raises(KeyError, match="CLICKHOUSE_PASSWORD"):
        interpolate(text, env_example())  # as shipped, compose refuses to start


def test_clickhouse_has_a_writer_with_a_password_and_grafana_a_read_only_user() -> None:
    every = services()
    ch = environment(every["clickhouse"])
    writer = ch["CLICKHOUSE_USER"]
    assert writer and writer != "default" and "CLICKHOUSE_PASSWORD" in ch["CLICKHOUSE_PASSWORD"]
    filled = filled_env()
    sink_url = urlparse(interpolate(environment(every["sink"])["STOCKFLOW_CLICKHOUSE_URL"], filled))
    assert (sink_url.scheme, sink_url.hostname, sink_url.port) == ("clickhouse", "clickhouse", 9000)
    assert (sink_url.username, sink_url.password) == (writer, interpolate(ch["CLICKHOUSE_PASSWORD"], filled))

    datasource = yaml.safe_load(DATASOURCE.read_text(encoding="utf-8"))["datasources"][0]
    reader = datasource["jsonData"]["username"]
    assert reader not in {writer, "default"}
    users = ET.parse(CLICKHOUSE_USERS).getroot()
    user = users.find(f"users/{reader}")
    assert user is not None, f"{CLICKHOUSE_USERS.name} defines no user {reader!r}"
    profile = users.find(f"profiles/{user.findtext('profile')}")
    assert profile is not None and profile.findtext("readonly") == "1", f"{reader} must be readonly=1"
    grants = [q.text for q in user.findall("grants/query")]
    assert grants == ["GRANT SELECT ON stockflow.*"], grants
    # One password, three places: the env file, ClickHouse's user, Grafana's data source.
    password = user.find("password")
    assert password is not None and password.get("from_env") in ch
    secret_var = ch[password.attrib["from_env"]]
    grafana = environment(every["grafana"])
    ds_var = datasource["secureJsonData"]["password"].lstrip("$").strip("{}")
    assert interpolate(grafana[ds_var], filled) == interpolate(secret_var, filled) != ""


def test_grafana_signs_in_and_installs_its_plugin_the_current_way() -> None:
    grafana = environment(services()["grafana"])
    assert "GF_INSTALL_PLUGINS" not in grafana, "deprecated: GF_PLUGINS_PREINSTALL(_SYNC)"
    assert "grafana-clickhouse-datasource" in grafana.get("GF_PLUGINS_PREINSTALL_SYNC", "") + grafana.get(
        "GF_PLUGINS_PREINSTALL", ""
    )
    assert grafana.get("GF_AUTH_ANONYMOUS_ENABLED", "false") == "false"
    assert "GF_AUTH_ANONYMOUS_ORG_ROLE" not in grafana
    assert grafana["GF_SECURITY_ADMIN_PASSWORD"].startswith("${GRAFANA_ADMIN_PASSWORD:?")


# ---- the dashboards' SQL ------------------------------------------------------------------------

_RAW = re.compile(r"\$\{\w+\}|\$(?!__)\w+|\[\[\w+\]\]")  # ${x}, $x and [[x]]: pasted as typed
_FORMATTED = re.compile(r"\$\{(\w+):(\w+)\}")


def _unsafe_variables(sql: str, variables: set[str]) -> list[str]:
    problems = [f"raw {m.group(0)}" for m in _RAW.finditer(sql)]
    for m in _FORMATTED.finditer(sql):
        name, fmt = m.groups()
        if fmt != "sqlstring":
            problems.append(f"{m.group(0)}: use :sqlstring")
        if name not in variables:
            problems.append(f"{m.group(0)}: no such dashboard variable")
        if sql[m.start() - 1 : m.start()] == "'":
            problems.append(f"'{m.group(0)}': :sqlstring quotes already")
    return problems


def test_grafana_sql_never_pastes_a_variable_raw() -> None:
    settings = Settings()
    model = queries.grafana_dashboard(settings)
    variables = {v["name"] for v in model["templating"]["list"]}
    for name, dash in queries.load_all().items():
        assert not _unsafe_variables(queries.grafana_sql(dash), variables), name
    committed = json.loads(DASHBOARD_JSON.read_text(encoding="utf-8"))
    for panel in committed["panels"]:
        for target in panel["targets"]:
            problems = _unsafe_variables(target["rawSql"], variables)
            assert not problems, f"{panel['title']}: {problems} (regenerate: stockflow dash --export-grafana)"


def test_the_unsafe_variable_check_catches_what_it_is_for() -> None:
    assert _unsafe_variables("WHERE sku = ${sku:sqlstring}", {"sku"}) == []
    assert _unsafe_variables("WHERE t > $__fromTime", set()) == []
    assert _unsafe_variables("WHERE sku = '${sku}'", {"sku"}) == ["raw ${sku}"]
    assert _unsafe_variables("WHERE sku = $sku", {"sku"}) == ["raw $sku"]
    assert _unsafe_variables("WHERE sku = '${sku:sqlstring}'", {"sku"}) == [
        "'${sku:sqlstring}': :sqlstring quotes already"
    ]
    assert _unsafe_variables("WHERE n < ${n:raw}", {"n"}) == ["${n:raw}: use :sqlstring"]


def sqlstring(value: str) -> str:
    """Grafana's ``:sqlstring`` format of a single value: quoted, its quotes doubled."""
    return "'" + value.replace("'", "''") + "'"


def grafana_render(sql: str, values: dict[str, str]) -> str:
    """A panel's SQL as Grafana sends it: variables formatted, the time-range macros expanded."""
    sql = _FORMATTED.sub(lambda m: sqlstring(values[m.group(1)]), sql)
    return sql.replace("$__fromTime", "toDateTime(0)").replace("$__toTime", "now()")


_RUN_ON_CHDB = """
import json, sys
from streams.settings import Settings
from streams.stores.clickhouse import open_clickhouse
ch = open_clickhouse(Settings(clickhouse_url="chdb://" + sys.argv[1]))
failed = {}
for title, sql in json.load(sys.stdin).items():
    try:
        ch.query(sql)
    except Exception as exc:
        failed[title] = str(exc)[:500]
ch.close()
print(json.dumps(failed))
"""


def test_grafana_sql_runs_on_clickhouse_as_grafana_sends_it(tmp_path: Path) -> None:
    """Every panel, with the variables' defaults and a SKU built to break out of its quotes, on the
    stockflow schema (embedded ClickHouse, in a process of its own: chdb keeps one session a process)."""
    model = json.loads(DASHBOARD_JSON.read_text(encoding="utf-8"))
    values = {
        v["name"]: str(v.get("current", {}).get("value", v.get("query", ""))) for v in model["templating"]["list"]
    }
    values["sku"] = "SKU-1' OR 1=1) UNION ALL SELECT name FROM system.users --"
    rendered = {p["title"]: grafana_render(p["targets"][0]["rawSql"], values) for p in model["panels"]}
    done = subprocess.run(
        [sys.executable, "-c", _RUN_ON_CHDB, str(tmp_path / "ch")],
        input=json.dumps(rendered), cwd=ROOT, capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {}


# ---- Debian's docker-compose ---------------------------------------------------------------------


def _compose_config(env_file: Path) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip("docker-compose is not installed (scripts/setup.sh installs it for the test script)")
    # The variables the file reads come from the env file alone, not from whoever runs the test.
    env = {k: v for k, v in os.environ.items() if k not in env_example() and not k.startswith("COMPOSE_")}
    return subprocess.run(
        [binary, "--env-file", str(env_file), "-f", str(COMPOSE), "config", "-q"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_docker_compose_config_accepts_the_file_with_the_env_file_filled_in(tmp_path: Path) -> None:
    env_file = tmp_path / "stockflow.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in filled_env().items()), encoding="utf-8")
    done = _compose_config(env_file)
    assert done.returncode == 0, done.stdout + done.stderr


def test_docker_compose_config_refuses_the_env_file_without_passwords() -> None:
    done = _compose_config(ENV_EXAMPLE)
    assert done.returncode != 0
    assert "set CLICKHOUSE_PASSWORD in .env" in done.stdout + done.stderr


def test_the_single_brokers_stop_without_a_controlled_shutdown(tmp_path: Path) -> None:
    """A single broker's controlled shutdown leaves its partitions leaderless while its transaction coordinator
    still commits, and a commit acknowledged then can be aborted on restart (README, Guarantees): the compose
    file's broker and the local one both stop without it."""
    from streams.devstack.localkafka import LocalKafka

    assert environment(services()["kafka"])["KAFKA_CONTROLLED_SHUTDOWN_ENABLE"] == "false"
    local = LocalKafka(Settings(home=tmp_path, kafka_port=19092, kafka_controller_port=19093)).config_text()
    assert "controlled.shutdown.enable=false" in local.splitlines()
