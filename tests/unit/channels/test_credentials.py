"""The connectors' credentials store and the expiry watch: file mode and atomic replace, changes seen
without a restart, secrets never printed, expiry states and their alerts."""

from __future__ import annotations

import json
import logging
import os
import stat
from datetime import date, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agents.channels.credentials import (
    DAY_MS,
    EXPIRY_ALERT,
    CredentialStore,
    ExpiryState,
    ExpiryWatch,
    StoredKey,
    expires_at_ms,
    expiry_state,
)
from agents.channels.platforms import CHINA, Credentials, fingerprint
from agents.cli import app

SECRET = "s3cr3t-value-that-must-never-show"
NOW = int(datetime(2026, 11, 1, 12, 0, tzinfo=CHINA).timestamp() * 1000)


def key(channel: str = "jd", secret: str = SECRET, expires: date | None = date(2026, 12, 31), app_key: str = "jd-app"):
    return StoredKey(channel, Credentials(app_key, secret), expires, NOW)


def test_a_key_is_stored_owner_only_and_read_back(tmp_path: Path) -> None:
    store = CredentialStore(tmp_path / "conn" / "credentials.json")
    store.set_key(key())
    store.set_key(key("tmall", "other", app_key="tm-app"))
    assert stat.S_IMODE(os.stat(store.path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(store.path.parent).st_mode) == 0o700
    fresh = CredentialStore(store.path)
    jd = fresh.get("jd")
    assert jd is not None and jd.credentials == Credentials("jd-app", SECRET) and jd.expires == date(2026, 12, 31)
    assert fresh.get("tmall") is not None and fresh.get("pdd") is None
    # Replaced whole through a temporary file: none is left beside it.
    assert sorted(p.name for p in store.path.parent.iterdir()) == ["credentials.json", "credentials.json.lock"]


def test_a_running_reader_sees_a_new_key_without_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "credentials.json"
    running = CredentialStore(path)
    assert running.get("jd") is None
    CredentialStore(path).set_key(key(secret="old"))
    assert running.get("jd").credentials.secret == "old"  # type: ignore[union-attr]
    generation = running.generation
    CredentialStore(path).set_key(key(secret="new-secret-longer"))
    assert running.get("jd").credentials.secret == "new-secret-longer"  # type: ignore[union-attr]
    assert running.generation == generation + 1


def test_a_broken_file_keeps_the_keys_in_use(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "credentials.json"
    CredentialStore(path).set_key(key())
    running = CredentialStore(path)
    assert running.get("jd") is not None
    path.write_text("{not json")
    with caplog.at_level(logging.ERROR):
        assert running.get("jd") is not None
    assert "not readable JSON" in caplog.text and SECRET not in caplog.text


def test_secrets_never_print(tmp_path: Path) -> None:
    stored = key()
    for text in (repr(stored), str(stored), repr(stored.credentials), str(stored.public(NOW, 7))):
        assert SECRET not in text
    assert stored.public(NOW, 7)["fingerprint"] == fingerprint(SECRET)


def test_a_key_expires_at_the_start_of_its_date_in_china_time() -> None:
    assert expires_at_ms(date(2026, 12, 31)) == int(datetime(2026, 12, 31, tzinfo=CHINA).timestamp() * 1000)
    ends = expires_at_ms(date(2026, 12, 31))
    assert expiry_state(ends, ends - 7 * DAY_MS - 1, 7) is ExpiryState.OK
    assert expiry_state(ends, ends - 7 * DAY_MS, 7) is ExpiryState.EXPIRING
    assert expiry_state(ends, ends - 1, 7) is ExpiryState.EXPIRING
    assert expiry_state(ends, ends, 7) is ExpiryState.EXPIRED
    assert expiry_state(None, ends, 7) is ExpiryState.OK


def test_expiry_alerts_are_raised_once_per_state_and_cleared_by_a_new_key() -> None:
    watch = ExpiryWatch(warn_days=7)
    soon = key(expires=date(2026, 11, 5))  # four days from NOW
    assert watch.check({"jd": key()}, NOW) == []  # eight weeks left: nothing
    watch = ExpiryWatch(warn_days=7)
    [warning] = watch.check({"jd": soon}, NOW)
    assert (warning["kind"], warning["severity"], warning["subject"], warning["cleared"]) == (
        EXPIRY_ALERT, "WARNING", "jd", False)  # fmt: skip
    assert SECRET not in json.dumps(warning)
    assert watch.check({"jd": soon}, NOW + 60_000) == []  # once per state
    [red] = watch.check({"jd": soon}, expires_at_ms(date(2026, 11, 5)))
    assert (red["severity"], red["cleared"]) == ("RED", False)
    [cleared] = watch.check({"jd": key(secret="renewed", expires=date(2027, 6, 30))}, expires_at_ms(date(2026, 11, 5)))
    assert (cleared["kind"], cleared["cleared"]) == (EXPIRY_ALERT, True)
    assert watch.check({"jd": key(secret="renewed", expires=date(2027, 6, 30))}, NOW + DAY_MS * 5) == []


def test_a_new_key_that_is_also_close_to_expiry_clears_and_warns_again() -> None:
    watch = ExpiryWatch(warn_days=7)
    watch.check({"jd": key(expires=date(2026, 11, 5))}, NOW)
    alerts = watch.check({"jd": key(secret="next", expires=date(2026, 11, 6))}, NOW)
    assert [(a["cleared"], a["severity"]) for a in alerts] == [(True, "WARNING"), (False, "WARNING")]


def test_a_restarted_watch_raises_the_same_alert_event() -> None:
    first = ExpiryWatch(7).check({"jd": key(expires=date(2026, 11, 5))}, NOW)
    again = ExpiryWatch(7).check({"jd": key(expires=date(2026, 11, 5))}, NOW + 3_600_000)
    assert [a["event_id"] for a in first] == [a["event_id"] for a in again]


def test_set_key_from_a_file_and_from_the_hidden_prompt(tmp_path: Path) -> None:
    runner = CliRunner()
    env = {"STOCKFLOW_HOME": str(tmp_path / "home")}
    secret_file = tmp_path / "secret.txt"
    secret_file.write_text(SECRET + "\n")
    until = (datetime.now(CHINA).date() + timedelta(days=90)).isoformat()
    result = runner.invoke(app, ["connectors", "set-key", "jd", "--app-key", "jd-app", "--secret-file",
                                 str(secret_file), "--expires", until], env=env)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert SECRET not in result.output and fingerprint(SECRET) in result.output
    store = CredentialStore(tmp_path / "home" / "connectors" / "credentials.json")
    assert store.get("jd").credentials.secret == SECRET  # type: ignore[union-attr]

    result = runner.invoke(app, ["connectors", "set-key", "tmall", "--app-key", "tm", "--expires", until],
                           input="typed-secret\ntyped-secret\n", env=env)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "typed-secret" not in result.output
    assert store.get("tmall").credentials.secret == "typed-secret"  # type: ignore[union-attr]
    assert store.get("jd").credentials.secret == SECRET  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nowhere", "--app-key", "k", "--expires", "2027-01-01"], "unknown channel"),
        (["jd", "--app-key", "k", "--expires", "31/12/2026"], "not a date"),
    ],
)
def test_set_key_refuses_what_it_cannot_store(tmp_path: Path, args: list[str], message: str) -> None:
    result = CliRunner().invoke(app, ["connectors", "set-key", *args], input="x\nx\n",
                                env={"STOCKFLOW_HOME": str(tmp_path)})  # fmt: skip
    assert result.exit_code == 1 and message in result.output
