"""The indexer: idempotent batches, the cursor committed with its rows, crash at any point + re-run = same ledger."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from tests.ledger.chainproxy import all_events
from tests.ledger.ledgerkit import ledger_digest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from atoma_ops.chain.types import EventId
from atoma_ops.ledger import ChainMismatch, Ledger, apply_batch
from atoma_ops.ledger.indexer import read_cursor, write_snapshot
from atoma_ops.ledger.migrations import LATEST_VERSION, MIGRATIONS
from atoma_ops.ledger.store import ensure_schema, unit_of_work


@pytest.fixture(scope="module")
def reference(synced) -> str:
    return ledger_digest(synced.path)


@pytest.fixture(scope="module")
def log(scenario):
    """Every event of the scenario's chain, with each transaction's effects."""
    return scenario.net.run(all_events(scenario.net.chain))


def apply_in_batches(path: Path, net, events, txs, cuts: list[int]) -> None:
    """Apply the log split at ``cuts`` (event indexes), each piece in its own transaction, on one connection."""
    ensure_schema(path)
    cfg, epoch = net.db_config(), net.current_epoch()
    with unit_of_work(path) as con:
        con.execute("BEGIN TRANSACTION")
        write_snapshot(con, cfg, epoch)
        con.execute("COMMIT")
        bounds = [0, *sorted(set(cuts)), len(events)]
        for lo, hi in zip(bounds, bounds[1:]):
            if hi > lo:
                apply_batch(con, events[lo:hi], txs, events[hi - 1].id)


def test_migrations_apply_on_open_and_only_once(tmp_path):
    ledger = Ledger(tmp_path / "l.duckdb")
    ensure_schema(ledger.path)
    with unit_of_work(ledger.path) as con:
        versions = [r[0] for r in con.execute("SELECT version FROM schema_migrations ORDER BY 1").fetchall()]
    assert versions == [m[0] for m in MIGRATIONS] and versions[-1] == LATEST_VERSION
    ensure_schema(ledger.path)  # a second open applies nothing
    with unit_of_work(ledger.path, read_only=True) as con:
        assert con.execute("SELECT count(*) FROM schema_migrations").fetchall()[0][0] == len(MIGRATIONS)
        tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    assert {"events", "indexer_cursor", "tasks", "nodes", "node_subscriptions", "stacks", "stack_settlement_tickets",
            "attestations", "disputes", "claims", "usage", "chain_actions", "earnings_by_node", "open_tickets",
            "usdc_flow"} <= tables


def test_sync_records_events_cursor_and_balance_changes(synced, scenario, log):
    events, txs = log
    with synced.reader() as con:
        assert con.execute("SELECT count(*) FROM events").fetchall()[0][0] == len(events)
        assert read_cursor(con) == events[-1].id
        stored = {(r[0], r[1], r[2]) for r in con.execute("SELECT tx_digest, address, amount FROM balance_changes").fetchall()}
        raw = con.execute(
            "SELECT name, parsed_json->>'$.stack_small_id.inner', epoch FROM events WHERE name = 'StackCreatedEvent' ORDER BY seq"
        ).fetchall()
    expected = {(d, a, v) for d, tx in txs.items() for a, v in tx.balance_changes.items() if v}
    assert stored == expected and len(stored) > 0
    assert [int(r[1]) for r in raw] == sorted(scenario.ids.values())


def test_applying_the_same_page_twice_changes_nothing(tmp_path, scenario, log):
    events, txs = log
    path = tmp_path / "l.duckdb"
    apply_in_batches(path, scenario.net, events[:12], txs, [])
    once = ledger_digest(path)
    with unit_of_work(path) as con:
        assert apply_batch(con, events[:12], txs, events[11].id) == (0, 12)
        assert apply_batch(con, events[5:12], txs, events[11].id) == (0, 7)
    assert ledger_digest(path) == once
    # and an overlapping page applies only its new part
    with unit_of_work(path) as con:
        assert apply_batch(con, events[8:20], txs, events[19].id) == (8, 4)
        assert read_cursor(con) == events[19].id


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cuts=st.lists(st.integers(min_value=1, max_value=30), max_size=6))
def test_any_split_into_batches_gives_the_same_ledger(tmp_path_factory, scenario, reference, log, cuts):
    events, txs = log
    path = tmp_path_factory.mktemp("split") / "l.duckdb"
    apply_in_batches(path, scenario.net, events, txs, [c for c in cuts if c < len(events)])
    assert ledger_digest(path) == reference


def test_crash_before_commit_then_rerun_gives_the_same_ledger(tmp_path, scenario, reference):
    ledger = Ledger(tmp_path / "l.duckdb")

    def crash(batch: int) -> None:
        if batch == 2:
            raise KeyboardInterrupt("power cut")

    with pytest.raises(KeyboardInterrupt):
        scenario.net.run(ledger.sync(scenario.net.chain, batch_events=4, page_limit=3, before_commit=crash))
    with ledger.reader() as con:  # batches 0 and 1 committed, batch 2 rolled back whole
        assert con.execute("SELECT count(*) FROM events").fetchall()[0][0] == 8
        assert read_cursor(con) is not None
    scenario.net.run(ledger.sync(scenario.net.chain, batch_events=4, page_limit=3))
    assert ledger_digest(ledger.path) == reference


def test_process_killed_mid_batch_then_rerun_gives_the_same_ledger(tmp_path, scenario, reference):
    path = tmp_path / "l.duckdb"
    script = textwrap.dedent(f"""
        import asyncio, os
        from pathlib import Path
        from atoma_ops.home import LocalnetHome
        from atoma_ops.ledger import Ledger

        def die(batch):
            if batch == 3:
                os._exit(3)          # no cleanup, no rollback, no close: like a kill -9

        chain = LocalnetHome(Path({str(scenario.home.path)!r})).open()
        asyncio.run(Ledger({str(path)!r}).sync(chain, batch_events=3, before_commit=die))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3, proc.stderr
    with Ledger(path).reader() as con:
        assert con.execute("SELECT count(*) FROM events").fetchall()[0][0] == 9
    scenario.net.run(Ledger(path).sync(scenario.net.chain))
    assert ledger_digest(path) == reference


def test_incremental_sync_equals_a_sync_from_scratch(tmp_path):
    from tests.ledger.scenario import build

    b = build(tmp_path / "net", claim_d=False)
    try:
        incremental = Ledger(tmp_path / "inc.duckdb")
        b.net.run(incremental.sync(b.net.chain))
        assert b.ids["D"] in incremental.tickets()["stack_small_id"].tolist()
        b.net.claim("node-3", b.ids["D"])  # refolds D (its earlier events are in the log) and node-3's withdrawal
        report = b.net.run(incremental.sync(b.net.chain))
        assert report.events_applied == 1
        scratch = Ledger(tmp_path / "scratch.duckdb")
        b.net.run(scratch.sync(b.net.chain, batch_events=7))
        assert ledger_digest(incremental.path) == ledger_digest(scratch.path)
        assert incremental.usdc_checks(mismatches_only=True).empty
    finally:
        b.close()


def test_a_ledger_of_another_chain_is_refused(tmp_path, synced, fresh):
    import shutil

    copy = tmp_path / "copy.duckdb"
    shutil.copy(synced.path, copy)
    with pytest.raises(ChainMismatch, match="re-initialised"):
        fresh.net.run(Ledger(copy).sync(fresh.net.chain))


def test_sync_of_an_empty_tail_is_a_no_op(synced, scenario, tmp_path):
    import shutil

    copy = tmp_path / "copy.duckdb"
    shutil.copy(synced.path, copy)
    before = ledger_digest(copy)
    report = scenario.net.run(Ledger(copy).sync(scenario.net.chain))
    assert (report.events_applied, report.batches) == (0, 0)
    assert ledger_digest(copy) == before
    assert isinstance(report.cursor, EventId)


def test_a_cursor_behind_the_log_catches_up_without_duplicates(synced, scenario, log, reference, tmp_path):
    import shutil

    events, _ = log
    copy = tmp_path / "copy.duckdb"
    shutil.copy(synced.path, copy)
    with unit_of_work(copy) as con:
        con.execute("UPDATE indexer_cursor SET tx_digest = ?, event_seq = ?", [events[9].id.tx_digest, events[9].id.event_seq])
    report = scenario.net.run(Ledger(copy).sync(scenario.net.chain, batch_events=5))
    assert (report.events_applied, report.events_skipped) == (0, len(events) - 10)
    with unit_of_work(copy, read_only=True) as con:
        assert read_cursor(con) == events[-1].id
    assert ledger_digest(copy) == reference
