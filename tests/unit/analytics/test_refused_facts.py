"""A settlement the pipeline refused is not its refund's (``schemas/ddl/007_refused_facts.sql``), on embedded
ClickHouse: the dead letter's row names the refused event, ``refund_facts`` sets it apart under its refund id
marked "(refused)", and the migration goes onto a database that already holds rows, or again after stopping
half-way."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

from agents.analytics.sink import BatchWriter, Received, SharedClickHouse, SinkStatus, decode_batch
from loadtest import events as ev
from streams.contract.codec import default_codec
from streams.contract.reasons import Reason
from streams.engine.deadletter import dead_letter
from streams.settings import Settings
from streams.stores.clickhouse import DDL_DIR, apply_migrations, open_clickhouse

CODEC = default_codec()
NOW_MS = 1_762_740_000_000


def settlement(order: str, refund: str, event_id: str) -> Received:
    record = {**ev.refund_settled("jd", order, refund, 9_900), "event_id": event_id, "event_time_ms": NOW_MS}
    return Received("p.refund.events", 0, len(event_id), b"k", CODEC.encode("RefundSettled", record))


def refusal(refused: Received) -> Received:
    """The dead letter the refund processor writes for ``refused``."""
    letter = dead_letter(SimpleNamespace(topic=refused.topic, partition=refused.partition, offset=refused.offset,
                                         key=refused.key, value=refused.value),
                         "agents.refunds.run_refunds", Reason.UNKNOWN_REFUND, "another order's", NOW_MS)  # fmt: skip
    return Received("p.deadletters", 0, refused.offset, b"k", CODEC.encode("DeadLetter", dict(letter)))


def settled_refunds(shared: SharedClickHouse) -> list[str]:
    return [r["refund_id"] for r in shared.query(
        "SELECT refund_id FROM refund_facts WHERE settlement_ms > 0 ORDER BY refund_id")]  # fmt: skip


def test_a_refused_settlement_stands_apart_and_the_migration_goes_onto_a_used_database(tmp_path: Path) -> None:
    before = tmp_path / "ddl"
    before.mkdir()
    for path in sorted(DDL_DIR.glob("*.sql"))[:6]:  # the database as the release before this one left it
        shutil.copy(path, before)
    assert not (before / "007_refused_facts.sql").exists()
    settings = Settings(clickhouse_url=f"chdb://{tmp_path / 'ch'}", clickhouse_database="t")
    shared = SharedClickHouse(settings, opener=lambda s: open_clickhouse(s, migrate=False))
    apply_migrations(shared.get(), before)
    old_refused = settlement("1", "r1", "settled:old")
    writer = BatchWriter(CODEC, shared, SinkStatus(), native=False)
    assert not writer.write([old_refused], NOW_MS)
    letter = next(row for table, row in decode_batch(CODEC, [refusal(old_refused)], NOW_MS)[0][0].rows
                  if table == "dead_letters")  # fmt: skip
    del letter["source_event_id"]  # as the release before stored it
    shared.get().insert("dead_letters", {name: [value] for name, value in letter.items()})

    assert apply_migrations(shared.get()) == [7]
    refused, kept = settlement("2", "r2", "settled:other-order"), settlement("3", "r3", "settled:own")
    assert not writer.write([refused, refusal(refused), kept], NOW_MS)
    # A dead letter stored before the migration has no event id: its settlement still counts as its refund's.
    assert settled_refunds(shared) == ["jd:r1", "jd:r2 (refused)", "jd:r3"]
    assert shared.query("SELECT source_event_id FROM dead_letters ORDER BY source_event_id") == [
        {"source_event_id": ""}, {"source_event_id": "settled:other-order"}]  # fmt: skip

    # Stopped after its first statement, the migration is applied again whole: the column it added already
    # is not added twice.
    again = tmp_path / "again"
    again.mkdir()
    shutil.copy(DDL_DIR / "007_refused_facts.sql", again / "008_refused_facts_again.sql")
    assert apply_migrations(shared.get(), again) == [8]
    assert settled_refunds(shared) == ["jd:r1", "jd:r2 (refused)", "jd:r3"]
    shared.drop()
