"""DuckDB lets one process hold the file read-write and refuses every other process, readers included. The ledger
holds it one unit of work at a time and retries with backoff, so a sync and an analyst in two processes both
finish; past the bound the error says who holds it."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from tests.ledger.ledgerkit import ledger_digest

from atoma_ops.ledger import Ledger, LedgerBusy

PRELUDE = "import asyncio, sys, time\nfrom pathlib import Path\nfrom atoma_ops.home import LocalnetHome\nfrom atoma_ops.ledger import Ledger\n"


def spawn(code: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", PRELUDE + textwrap.dedent(code)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the other process never got going"
        time.sleep(0.01)


def test_analyst_queries_while_another_process_syncs(tmp_path, scenario, synced):
    path = tmp_path / "ledger.duckdb"
    writer = spawn(f"""
        class SlowReads:
            # The chain on the other side of a network: each page takes a while to arrive. The ledger file is
            # closed while pages are read, so the analyst's queries get their turns whatever the machine's speed.
            def __init__(self, inner):
                self.inner = inner

            def __getattr__(self, name):
                return getattr(self.inner, name)

            async def events(self, cursor=None, limit=50):
                await asyncio.sleep(0.05)
                return await self.inner.events(cursor, limit)

        chain = SlowReads(LocalnetHome(Path({str(scenario.home.path)!r})).open())
        # two events per batch: ~16 short write transactions, each a unit of work
        report = asyncio.run(Ledger(Path({str(path)!r})).sync(chain, batch_events=2, page_limit=2))
        print(report.batches)
    """)
    wait_for(path, writer)
    analyst = Ledger(path, lock_timeout_s=30)
    seen, during = [], 0
    while True:
        running = writer.poll() is None
        try:
            n = int(analyst.query("SELECT count(*) AS n FROM events")["n"][0])
        except Exception as exc:  # the schema may not be there in the very first instant
            if "does not exist" not in str(exc):
                raise
            continue
        seen.append(n)
        during += running
        if not running:
            break
        time.sleep(0.01)
    out, err = writer.communicate()
    assert writer.returncode == 0, err
    assert int(out.strip()) >= 15
    assert during >= 3, seen                     # queries ran and finished while the sync was writing
    assert seen == sorted(seen)                  # each saw a committed prefix of the log
    assert analyst.earnings(by="node")["total"].sum() == 2_200_000
    assert ledger_digest(path) == ledger_digest(synced.path)


def hold_reader(path: Path, marker: Path, seconds: float) -> subprocess.Popen:
    return spawn(f"""
        ledger = Ledger(Path({str(path)!r}))
        with ledger.reader() as con:           # an analyst's long query: the file is held all along
            con.execute("SELECT count(*) FROM events").fetchall()
            Path({str(marker)!r}).write_text("holding")
            time.sleep({seconds})
    """)


def test_sync_waits_for_an_analyst_in_another_process_then_finishes(tmp_path, scenario, synced):
    path = tmp_path / "ledger.duckdb"
    ledger = Ledger(path)
    scenario.net.run(ledger.sync(scenario.net.chain, batch_events=10))
    with ledger.writer() as con:  # forget the last batches, so the next sync has work to do
        con.execute("DELETE FROM indexer_cursor")
    marker = tmp_path / "holding"
    analyst = hold_reader(path, marker, 1.0)
    wait_for(marker, analyst)
    started = time.monotonic()
    report = scenario.net.run(ledger.sync(scenario.net.chain))
    waited = time.monotonic() - started
    _, err = analyst.communicate()
    assert analyst.returncode == 0, err
    assert waited >= 0.5, waited                 # it met the lock and backed off until the reader closed
    assert report.events_skipped > 0 and report.events_applied == 0
    assert ledger_digest(path) == ledger_digest(synced.path)


def test_a_writer_that_meets_a_lock_for_too_long_fails_clearly(tmp_path, synced):
    import shutil

    path = tmp_path / "ledger.duckdb"
    shutil.copy(synced.path, path)
    marker = tmp_path / "holding"
    analyst = hold_reader(path, marker, 3.0)
    wait_for(marker, analyst)
    started = time.monotonic()
    with pytest.raises(LedgerBusy) as info:
        Ledger(path, lock_timeout_s=0.4).record_action("k", "claim_funds", "planned")
    elapsed = time.monotonic() - started
    analyst.kill()
    analyst.communicate()
    assert 0.4 <= elapsed < 2.5
    message = str(info.value)
    assert f"pid {analyst.pid}" in message and str(path) in message and "export" in message
