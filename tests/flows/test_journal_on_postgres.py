"""The flows with the intent journal on PostgreSQL, chosen by the ``AtomaNetwork`` block's ``journal_url``: every
chain write is journaled there (and none in the ledger), and a second run finds them done."""

from __future__ import annotations

import asyncio

from atoma_ops.journal_postgres import PostgresJournal
from atoma_ops.ledger.api import Ledger, default_path
from atoma_ops.testing import served as kit
from blocks import AtomaNetwork
from flows import settlement_run


def test_settlement_run_journals_on_postgres_when_the_block_names_it(tmp_path, pg_database):
    served = kit.served_stacks(tmp_path / "ln", 3)
    network = AtomaNetwork(home=str(served.home), journal_url=pg_database)

    first = asyncio.run(settlement_run(idle_after_s=0, network=network))
    settles = [a for a in first if a["action"] == "try_settle"]
    assert sorted(a["stack_small_id"] for a in settles) == served.stack_small_ids
    assert {a["status"] for a in settles} == {"success"}

    keys = [f"try_settle_stack:{s}" for s in served.stack_small_ids]
    journal = PostgresJournal(pg_database)
    try:
        rows = journal.actions(keys)
    finally:
        journal.close()
    assert {k: r["status"] for k, r in rows.items()} == dict.fromkeys(keys, "success")
    assert {r["digest"] for r in rows.values()} == {a["digest"] for a in settles}
    assert all(r["attempts"] == 1 and r["signed_tx_bytes"] for r in rows.values())
    ledger = Ledger(default_path(served.home))
    assert ledger.actions(keys) == {}  # the ledger's journal was not written

    second = asyncio.run(settlement_run(idle_after_s=0, network=network))
    assert [a for a in second if a["action"] == "try_settle"] == []  # nothing settled twice
