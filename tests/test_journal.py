"""The intent journal (atoma_ops.journal) and the idempotent lifecycle stages, on a real localnet and a real ledger.

Every test gets a fresh localnet (the ``chain`` fixture) and a journal of its own, once in each store (the
``ledger`` fixture's two params): the DuckDB ledger's ``chain_actions`` table (a ledger in ``tmp_path``) and
PostgreSQL. "Nothing happened on chain" is checked by counting the localnet's events and transactions before and
after.
"""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
from pathlib import Path

import pytest

from atoma_ops import lifecycle
from atoma_ops.chain.errors import InvalidArgument, MoveAbort, TransactionRejected
from atoma_ops.chain.digests import transaction_digest
from atoma_ops.core.errors import ErrorClass, classify, is_retryable
from atoma_ops.journal import (
    ActionFailed,
    ActionResult,
    InDoubt,
    Intent,
    WrittenElsewhere,
    execute_intent,
    execute_intents,
)
from atoma_ops.ledger import Ledger
from atoma_ops.ledger.store import LedgerBusy

# atoma::db abort codes (atoma-protocol.md §1.1)
E_TASK_NOT_FOUND = 312012017
E_INVALID_PRICE = 312012037


def run(coro):
    return asyncio.run(coro)


@pytest.fixture(scope="module")
def migrated(tmp_path_factory) -> Path:
    """An empty ledger with its schema in place (migrating takes most of a fresh ledger's first write)."""
    path = tmp_path_factory.mktemp("template") / "ledger.duckdb"
    Ledger(path)._ensure()
    return path


@pytest.fixture(params=["duckdb", "postgres"])
def ledger(request, tmp_path, migrated):
    """The journal of the test's own, in each store (one contract for both): the DuckDB ledger (a copy of the
    migrated empty one), or PostgreSQL (the module's database, emptied)."""
    if request.param == "postgres":
        from atoma_ops.journal_postgres import PostgresJournal

        journal = PostgresJournal(request.getfixturevalue("pg_database"))
        with journal._transaction() as cur:
            cur.execute("TRUNCATE chain_actions")
        yield journal
        journal.close()
        return
    for suffix in ("", ".wal"):
        source = Path(str(migrated) + suffix)
        if source.exists():
            shutil.copyfile(source, tmp_path / ("ledger.duckdb" + suffix))
    yield Ledger(tmp_path / "ledger.duckdb")


def events(chain) -> list:
    out, cursor = [], None
    while True:
        page = chain.localnet.events(cursor, 500)
        out.extend(page.events)
        if not page.has_next_page:
            return out
        cursor = page.next_cursor


def n_transactions(chain) -> int:
    return chain.localnet.conn.execute("SELECT count(*) FROM transactions").fetchone()[0]


def node_badges(chain, alias: str) -> list:
    return [b for b in chain.localnet.badges(chain.wallet.resolve(alias)) if b.kind == "NodeBadge"]


def register(alias: str) -> Intent:
    return Intent(f"register:{alias}", "register_node_entry", alias)


def create_task(key: str, model_name: str = "m") -> Intent:
    return Intent(key, "create_task_entry", "admin", {"role": 0, "model_name": model_name, "is_public": True})


def subscribe(key: str, alias: str, task_small_id: int, price: int) -> Intent:
    return Intent(
        key, "subscribe_node_to_task", alias,
        {"task_small_id": task_small_id, "price_per_one_million_compute_units": price},
    )


async def journal_pending(chain, ledger: Ledger, intent: Intent):
    """What the journal does before submitting: prepare, sign, journal as ``pending`` — and nothing more."""
    p = await chain.prepare(intent.sender, intent.function, intent.args)
    sig = chain.sign(p)
    await asyncio.to_thread(
        ledger.record_actions,
        [{
            "idempotency_key": intent.key,
            "kind": intent.function,
            "status": "pending",
            "sender": p.sender,
            "args": intent.args,
            "signed_tx_bytes": p.tx_bytes,
            "signature": sig,
            "digest": p.digest,
            "attempt": True,
        }],
    )
    return p, sig


# ----------------------------------------------------------------------------------------------- 1. exactly once
def test_fresh_intent_executes_once_and_a_rerun_does_nothing(chain, ledger):
    ev0, tx0 = len(events(chain)), n_transactions(chain)

    (r,) = run(execute_intents(chain, ledger, [register("node-1")]))
    assert r.status == "success" and r.ok and not r.recovered
    assert r.tx is not None and r.tx.digest == r.digest
    assert [e.name for e in r.tx.events] == ["NodeRegisteredEvent"]
    assert len(events(chain)) == ev0 + 1
    assert n_transactions(chain) == tx0 + 1

    row = ledger.actions(["register:node-1"])["register:node-1"]
    assert row["status"] == "success"
    assert row["kind"] == "register_node_entry"
    assert row["digest"] == r.digest
    assert row["sender"] == chain.wallet.resolve("node-1")
    # the journal holds the very bytes that were executed: they hash to the digest, and the chain knows them
    assert isinstance(row["signed_tx_bytes"], bytes) and transaction_digest(row["signed_tx_bytes"]) == r.digest
    assert row["signature"]
    assert row["attempts"] == 1
    assert row["last_error_code"] is None

    (again,) = run(execute_intents(chain, ledger, [register("node-1")]))
    assert again.status == "success" and again.digest == r.digest
    assert again.tx is None  # answered from the journal, not from a new execution
    assert len(events(chain)) == ev0 + 1
    assert n_transactions(chain) == tx0 + 1
    assert len(node_badges(chain, "node-1")) == 1
    assert ledger.actions(["register:node-1"])["register:node-1"]["attempts"] == 1


# ----------------------------------------------------------------------------------------------- 2-3. recovery
def test_pending_row_never_submitted_is_resent_with_identical_bytes(chain, ledger):
    journaled = create_task("task:a", model_name="journaled")
    p, _ = run(journal_pending(chain, ledger, journaled))
    assert chain.localnet.get_transaction(p.digest) is None  # nothing reached the chain
    ev0 = len(events(chain))

    # the re-run names the same key with other arguments: the journaled bytes are what gets sent
    (r,) = run(execute_intents(chain, ledger, [create_task("task:a", model_name="other")]))
    assert r.status == "success" and r.recovered is True and r.resent is True
    assert r.digest == p.digest
    tx = chain.localnet.get_transaction(p.digest)
    assert tx is not None and tx.ok
    assert [e.name for e in tx.events] == ["TaskRegisteredEvent"]
    task_id = int(tx.event("TaskRegisteredEvent").parsed_json["task_small_id"]["inner"])
    assert chain.localnet.get_task(task_id).model_name == "journaled"
    assert len(events(chain)) == ev0 + 1

    row = ledger.actions(["task:a"])["task:a"]
    assert row["status"] == "success" and row["digest"] == p.digest
    assert row["signed_tx_bytes"] == p.tx_bytes
    assert row["attempts"] == 2  # journaled once, submitted once more by the recovery


def test_pending_row_already_executed_is_not_executed_again(chain, ledger):
    intent = register("node-2")
    p, sig = run(journal_pending(chain, ledger, intent))
    first = run(chain.execute(p, sig))  # the process "died" after submitting, before recording the outcome
    assert first.ok
    ev0, tx0 = len(events(chain)), n_transactions(chain)

    (r,) = run(execute_intents(chain, ledger, [intent]))
    assert r.status == "success" and r.recovered is True and r.resent is False
    assert r.digest == p.digest == first.digest
    assert r.tx is not None and [e.name for e in r.tx.events] == ["NodeRegisteredEvent"]
    assert len(events(chain)) == ev0
    assert n_transactions(chain) == tx0
    assert len(node_badges(chain, "node-2")) == 1
    row = ledger.actions([intent.key])[intent.key]
    assert row["status"] == "success" and row["digest"] == p.digest
    assert row["attempts"] == 1  # found on chain: nothing was submitted again


def test_pending_row_that_aborted_on_chain_is_recorded_failed(chain, ledger):
    run(chain.register_node_entry("node-1"))
    intent = subscribe("sub:missing", "node-1", 42, 100)  # task 42 does not exist
    p, sig = run(journal_pending(chain, ledger, intent))
    with pytest.raises(MoveAbort):
        run(chain.execute(p, sig))
    tx0 = n_transactions(chain)

    (r,) = run(execute_intents(chain, ledger, [intent], raise_on_failure=False))
    assert r.status == "failed" and r.recovered is True and r.digest == p.digest
    assert isinstance(r.error, MoveAbort) and r.error.name == "ETaskNotFound"
    assert n_transactions(chain) == tx0
    row = ledger.actions([intent.key])[intent.key]
    assert row["status"] == "failed"
    assert row["last_error_code"] == f"db:{E_TASK_NOT_FOUND}"


# ----------------------------------------------------------------------------------------------- 4. preflight
def test_preflight_done_means_already_done_and_nothing_signed(chain, ledger):
    calls = []

    async def done() -> bool:
        calls.append("done")
        return True

    async def resolve() -> dict:
        raise AssertionError("resolve must not run for an intent already done")

    ev0, tx0 = len(events(chain)), n_transactions(chain)
    intent = Intent("register:node-3", "register_node_entry", "node-3", resolve=resolve, done=done)
    (r,) = run(execute_intents(chain, ledger, [intent]))
    assert r.status == "already_done" and r.ok
    assert r.digest is None and r.tx is None
    assert calls == ["done"]
    assert len(events(chain)) == ev0 and n_transactions(chain) == tx0
    assert node_badges(chain, "node-3") == []

    row = ledger.actions(["register:node-3"])["register:node-3"]
    assert row["status"] == "already_done"
    assert row["signed_tx_bytes"] is None and row["signature"] is None and row["digest"] is None
    assert row["attempts"] == 0

    # a finished row stands: the preflight is not asked again
    (again,) = run(execute_intents(chain, ledger, [intent]))
    assert again.status == "already_done" and calls == ["done"]


# ----------------------------------------------------------------------------------------------- 5. Move aborts
def test_move_abort_raises_the_chains_error_and_journals_failed(chain, ledger):
    run(chain.register_node_entry("node-1"))
    task_id = chain.localnet.db_config().next_task_small_id  # no task yet: this id does not exist
    intent = subscribe("sub:node-1", "node-1", task_id, 100)

    with pytest.raises(MoveAbort) as info:
        run(execute_intent(chain, ledger, intent))
    assert (info.value.module, info.value.code, info.value.name) == ("db", E_TASK_NOT_FOUND, "ETaskNotFound")

    row = ledger.actions([intent.key])[intent.key]
    assert row["status"] == "failed"
    assert row["last_error_code"] == f"db:{E_TASK_NOT_FOUND}"
    assert "ETaskNotFound" in row["last_error"]
    assert row["attempts"] == 1
    failed_digest = row["digest"]
    recorded = chain.localnet.get_transaction(failed_digest)
    assert recorded is not None and recorded.status == "failure"

    # the task appears; a later run of the failed key signs fresh bytes and succeeds
    run(chain.create_task_entry("admin", role=0, model_name="m"))
    assert chain.localnet.get_task(task_id) is not None
    r = run(execute_intent(chain, ledger, intent))
    assert r.status == "success" and not r.recovered
    assert r.digest != failed_digest
    row = ledger.actions([intent.key])[intent.key]
    assert row["status"] == "success" and row["digest"] == r.digest and row["attempts"] == 2
    assert [s.price_per_one_million_compute_units for s in chain.localnet.subscriptions(task_id)] == [100]


def test_a_refused_intent_does_not_stop_the_rest_of_the_batch(chain, ledger):
    run(chain.register_node_entry("node-1"))
    run(chain.create_task_entry("admin", role=0, model_name="m"))
    task_id = chain.localnet.db_config().next_task_small_id - 1
    ok_a = register("node-2")
    bad = subscribe("sub:zero-price", "node-1", task_id, 0)  # EInvalidPricePerComputeUnit
    ok_b = register("node-3")

    results = run(execute_intents(chain, ledger, [ok_a, bad, ok_b], raise_on_failure=False))
    assert [r.key for r in results] == ["register:node-2", "sub:zero-price", "register:node-3"]
    assert [r.status for r in results] == ["success", "failed", "success"]
    assert isinstance(results[1].error, MoveAbort) and results[1].error.name == "EInvalidPricePerComputeUnit"
    assert len(node_badges(chain, "node-2")) == 1 and len(node_badges(chain, "node-3")) == 1
    rows = ledger.actions([ok_a.key, bad.key, ok_b.key])
    assert {k: r["status"] for k, r in rows.items()} == {
        "register:node-2": "success", "sub:zero-price": "failed", "register:node-3": "success",
    }
    assert rows["sub:zero-price"]["last_error_code"] == f"db:{E_INVALID_PRICE}"
    first_failed_digest = rows["sub:zero-price"]["digest"]

    # raise_on_failure: the batch runs, then ActionFailed names the refused key; the failed key is tried again
    with pytest.raises(ActionFailed) as info:
        run(execute_intents(chain, ledger, [ok_a, bad, ok_b]))
    assert list(info.value.failures) == ["sub:zero-price"]
    assert "sub:zero-price" in str(info.value)
    assert [r.status for r in info.value.results] == ["success", "failed", "success"]
    row = ledger.actions([bad.key])[bad.key]
    assert row["attempts"] == 2
    assert row["digest"] != first_failed_digest  # fresh bytes, not the refused ones again
    assert chain.localnet.subscriptions(task_id) == []


# ----------------------------------------------------------------------------------------------- 6. batches
def test_duplicate_keys_are_refused_before_anything_happens(chain, ledger):
    ev0 = len(events(chain))
    with pytest.raises(InvalidArgument):
        run(execute_intents(chain, ledger, [register("node-1"), Intent("register:node-1", "register_node_entry", "node-2")]))
    assert len(events(chain)) == ev0
    assert ledger.actions() == {}


def test_results_come_back_in_the_intents_order(chain, ledger):
    run(execute_intents(chain, ledger, [register("node-2")]))  # journaled success before the batch

    async def yes() -> bool:
        return True

    batch = [
        register("node-1"),  # fresh: signed and submitted
        Intent("skip", "register_node_entry", "node-3", done=yes),  # preflight: already done
        register("node-2"),  # already in the journal
    ]
    results = run(execute_intents(chain, ledger, batch))
    assert all(isinstance(r, ActionResult) for r in results)
    assert [r.key for r in results] == ["register:node-1", "skip", "register:node-2"]
    assert [r.status for r in results] == ["success", "already_done", "success"]
    assert node_badges(chain, "node-3") == []


# ----------------------------------------------------------------------------------------------- 7. error classes
@pytest.mark.parametrize(
    "exc, expected",
    [
        (MoveAbort("db", E_TASK_NOT_FOUND), ErrorClass.TERMINAL),
        (InvalidArgument("bad"), ErrorClass.TERMINAL),
        (TransactionRejected("bad signature"), ErrorClass.TERMINAL),
        (InDoubt("submitted, outcome unknown", "0xabc"), ErrorClass.IN_DOUBT),
        (LedgerBusy("held by another process"), ErrorClass.RETRYABLE),
        (ConnectionError("reset"), ErrorClass.RETRYABLE),
        (TimeoutError(), ErrorClass.RETRYABLE),
        (sqlite3.OperationalError("database is locked"), ErrorClass.RETRYABLE),
        (sqlite3.OperationalError("no such table: x"), ErrorClass.TERMINAL),
        (ValueError("nonsense"), ErrorClass.TERMINAL),
    ],
)
def test_classify(exc, expected):
    assert classify(exc) is expected
    assert is_retryable(exc) is (expected is not ErrorClass.TERMINAL)


# ----------------------------------------------------------------------------------------------- 8. lifecycle stages
def test_create_task_twice_creates_one_task(chain, ledger):
    before = chain.localnet.db_config().next_task_small_id
    first = run(lifecycle.create_task(chain, ledger, "admin", key="k", model_name="llama"))
    second = run(lifecycle.create_task(chain, ledger, "admin", key="k", model_name="llama"))
    assert first == second == before
    assert chain.localnet.db_config().next_task_small_id == before + 1
    assert chain.localnet.get_task(first).model_name == "llama"
    assert [e.name for e in events(chain)].count("TaskRegisteredEvent") == 1


def test_register_node_twice_gives_one_badge(chain, ledger):
    a = run(lifecycle.register_node(chain, ledger, "node-1"))
    b = run(lifecycle.register_node(chain, ledger, "node-1"))
    assert a == b
    assert [x.small_id for x in node_badges(chain, "node-1")] == [a]
    assert chain.localnet.db_config().next_node_small_id == a + 1


def test_register_node_records_a_registration_a_crash_left_pending(chain, ledger):
    """Found by the crash harness: the node holds its badge, so the stage returned early and left the row that
    registered it ``pending`` for ever. It is now looked up by digest and recorded."""
    address = chain.wallet.resolve("node-1")
    intent = Intent(f"register_node_entry:{address}", "register_node_entry", address)
    p, sig = run(journal_pending(chain, ledger, intent))
    run(chain.execute(p, sig))  # executed; the crash came before the outcome was recorded
    tx0 = n_transactions(chain)

    run(lifecycle.register_node(chain, ledger, "node-1"))
    row = ledger.actions([intent.key])[intent.key]
    assert row["status"] == "success" and row["digest"] == p.digest and row["attempts"] == 1
    assert n_transactions(chain) == tx0 and len(node_badges(chain, "node-1")) == 1


def test_register_node_never_resends_a_pending_registration_once_registered(chain, ledger):
    """A pending registration the chain never saw, while the node got its badge another way (the CLI): resending
    the bytes would register it twice, so the row is closed as ``already_done`` and nothing is sent."""
    address = chain.wallet.resolve("node-1")
    intent = Intent(f"register_node_entry:{address}", "register_node_entry", address)
    p, _ = run(journal_pending(chain, ledger, intent))
    run(chain.register_node_entry("node-1"))  # registered outside the journal
    tx0 = n_transactions(chain)

    run(lifecycle.register_node(chain, ledger, "node-1"))
    row = ledger.actions([intent.key])[intent.key]
    assert row["status"] == "already_done" and row["attempts"] == 1
    assert chain.localnet.get_transaction(p.digest) is None
    assert n_transactions(chain) == tx0 and len(node_badges(chain, "node-1")) == 1


def test_subscribe_node_records_a_subscription_a_crash_left_pending(chain, ledger):
    task = run(lifecycle.create_task(chain, ledger, "admin", key="t", model_name="m", security_level=0))
    node_id = run(lifecycle.register_node(chain, ledger, "node-1"))
    key = f"subscribe_node_to_task:{task}:{node_id}:900"
    intent = subscribe(key, "node-1", task, 900)
    intent.args["node_small_id"] = node_id
    p, sig = run(journal_pending(chain, ledger, intent))
    run(chain.execute(p, sig))
    tx0 = n_transactions(chain)

    assert run(lifecycle.subscribe_node(chain, ledger, "node-1", task_small_id=task, price=900)) == node_id
    row = ledger.actions([key])[key]
    assert row["status"] == "success" and row["digest"] == p.digest
    assert n_transactions(chain) == tx0


def test_subscribe_node_at_a_new_price_updates_the_subscription(chain, ledger):
    task_id = run(lifecycle.create_task(chain, ledger, "admin", key="t"))
    node_id = run(lifecycle.subscribe_node(chain, ledger, "node-1", task_small_id=task_id, price=100))
    assert node_id == node_badges(chain, "node-1")[0].small_id

    def prices():
        return [(s.node_small_id, s.price_per_one_million_compute_units) for s in chain.localnet.subscriptions(task_id)]

    assert prices() == [(node_id, 100)]
    ev0 = len(events(chain))
    assert run(lifecycle.subscribe_node(chain, ledger, "node-1", task_small_id=task_id, price=100)) == node_id
    assert len(events(chain)) == ev0  # same price: nothing to do

    assert run(lifecycle.subscribe_node(chain, ledger, "node-1", task_small_id=task_id, price=250)) == node_id
    assert prices() == [(node_id, 250)]
    assert [e.name for e in events(chain)[ev0:]] == ["NodeSubscriptionUpdatedEvent"]
    assert ledger.actions([f"update_node_subscription:{task_id}:{node_id}:250"])[
        f"update_node_subscription:{task_id}:{node_id}:250"]["status"] == "success"


def test_subscribe_node_back_to_an_earlier_price(chain, ledger):
    task_id = run(lifecycle.create_task(chain, ledger, "admin", key="t"))
    run(lifecycle.subscribe_node(chain, ledger, "node-1", task_small_id=task_id, price=100))
    run(lifecycle.subscribe_node(chain, ledger, "node-1", task_small_id=task_id, price=200))
    run(lifecycle.subscribe_node(chain, ledger, "node-1", task_small_id=task_id, price=100))
    run(lifecycle.subscribe_node(chain, ledger, "node-1", task_small_id=task_id, price=200))
    assert [s.price_per_one_million_compute_units for s in chain.localnet.subscriptions(task_id)] == [200]


def test_buy_stack_twice_buys_one_stack(chain, ledger):
    task_id = run(lifecycle.create_task(chain, ledger, "admin", key="t"))
    run(lifecycle.subscribe_node(chain, ledger, "node-1", task_small_id=task_id, price=1_000_000))
    run(lifecycle.mint_usdc(chain, "user", 5_000_000))

    # 500,000 units at 2,000,000 per million (no security level): floor(2e6 * 5e5 / 1e6) = 1,000,000 base units
    first = run(lifecycle.buy_stack(chain, ledger, "user", key="s", task_small_id=task_id, num_compute_units=500_000, price=2_000_000))
    second = run(lifecycle.buy_stack(chain, ledger, "user", key="s", task_small_id=task_id, num_compute_units=500_000, price=2_000_000))
    assert first == second
    assert first.selected_node_id == node_badges(chain, "node-1")[0].small_id  # the only subscribed node
    assert [s.stack_small_id for s in chain.localnet.list_stacks()] == [first.stack_small_id]
    assert chain.localnet.get_stack(first.stack_small_id).num_compute_units == 500_000
    assert [e.name for e in events(chain)].count("StackCreatedEvent") == 1
    assert chain.localnet.usdc_balance(chain.wallet.resolve("user")) == 4_000_000
    assert chain.localnet.db_config().fee_treasury == 1_000_000


def test_mint_usdc_twice_mints_once(chain):
    first = run(lifecycle.mint_usdc(chain, "user", 5_000_000))
    assert (first.balance_before, first.minted, first.balance_after) == (0, 5_000_000, 5_000_000)
    assert first.digest is not None
    second = run(lifecycle.mint_usdc(chain, "user", 5_000_000))
    assert (second.balance_before, second.minted, second.balance_after) == (5_000_000, 0, 5_000_000)
    assert second.digest is None
    assert chain.localnet.usdc_balance(chain.wallet.resolve("user")) == 5_000_000
    assert chain.localnet.usdc_minted() == 5_000_000


def test_set_cross_validation_back_to_an_earlier_value(chain, ledger):
    for value in (20, 30, 20):
        run(lifecycle.set_cross_validation(chain, ledger, "admin", probability_permille=value, extra_nodes_count=None))
        assert run(chain.db_config()).cross_validation_probability_permille == value


def test_a_refusing_preflight_fails_only_its_own_intent(chain, ledger):
    """A preflight that finds a refusal (e.g. a ticket with another proof) fails that intent; the rest run."""
    from atoma_ops.serving.metering import StackSettling

    async def refuses() -> bool:
        raise StackSettling("stack 9 already has a settlement ticket with another proof", stack_small_id=9)

    good = Intent("register:node-1", "register_node_entry", "node-1")
    bad = Intent("register:node-2", "register_node_entry", "node-2", done=refuses)
    results = run(execute_intents(chain, ledger, [good, bad], raise_on_failure=False))
    assert [r.status for r in results] == ["success", "failed"]
    assert isinstance(results[1].error, StackSettling)
    rows = ledger.actions(["register:node-1", "register:node-2"])
    assert rows["register:node-1"]["status"] == "success"
    assert "register:node-2" not in rows  # refused before signing: nothing to journal, the ledger unchanged
    assert len(chain.localnet.badges(chain.wallet.resolve("node-2"))) == 0


# ----------------------------------------------------------------------------------------------- 9. claims
def _pending(key: str, digest: str, **extra) -> dict:
    return {"idempotency_key": key, "kind": "register_node_entry", "status": "pending", "digest": digest,
            "signed_tx_bytes": digest.encode(), "signature": "sig-" + digest, "attempt": True, **extra}


def test_a_claim_takes_only_free_keys_and_never_overwrites_a_pending_row(ledger):
    assert ledger.claim_actions([_pending("a", "d1"), _pending("b", "d2")]) == ["a", "b"]
    # "a" is pending (someone is submitting it): a second claim gets "c" only, and "a" keeps the first bytes
    assert ledger.claim_actions([_pending("a", "d3"), _pending("c", "d4")]) == ["c"]
    rows = ledger.actions(["a", "b", "c"])
    assert (rows["a"]["digest"], rows["a"]["signed_tx_bytes"], rows["a"]["attempts"]) == ("d1", b"d1", 1)

    ledger.record_actions([{"idempotency_key": "a", "kind": "register_node_entry", "status": "failed", "digest": "d1"},
                           {"idempotency_key": "b", "kind": "register_node_entry", "status": "success", "digest": "d2"}])
    # a failed key may be tried again; a finished one only by a repeatable intent
    assert ledger.claim_actions([_pending("a", "d5"), _pending("b", "d6")]) == ["a"]
    assert ledger.claim_actions([_pending("b", "d7", repeatable=True)]) == ["b"]
    rows = ledger.actions(["a", "b"])
    assert (rows["a"]["status"], rows["a"]["digest"], rows["a"]["attempts"]) == ("pending", "d5", 2)
    assert (rows["b"]["status"], rows["b"]["digest"], rows["b"]["attempts"]) == ("pending", "d7", 2)


@pytest.mark.parametrize("fate", ["success", "failed", "never"])
def test_an_intent_whose_key_another_writer_holds_takes_that_writers_outcome(chain, ledger, monkeypatch, fate):
    """Another writer journaled the key (pending) after this one's first read: this one signs, loses the claim and
    never submits. It takes the other's outcome: its success; its refusal (``WrittenElsewhere``); or, when the other
    never finishes within the wait, ``InDoubt`` with the other's digest (a retry resolves that row by digest)."""
    import atoma_ops.journal as journal_module

    monkeypatch.setattr(journal_module, "CLAIM_WAIT_S", 0.3)
    other = register("node-1")
    p, sig = run(journal_pending(chain, ledger, other))  # the other writer's claim
    real_claim, real_actions = ledger.claim_actions, ledger.actions

    def claim_then_other_finishes(rows):
        claimed = real_claim(rows)  # loses: the key is pending
        if fate == "success":
            run(chain.execute(p, sig))
        if fate != "never":
            ledger.record_actions([{"idempotency_key": other.key, "kind": other.function, "status": fate,
                                    "digest": p.digest, "last_error": None if fate == "success" else "refused there"}])
        return claimed

    reads = []

    def actions(keys=None, **kw):  # the first read (step 1) comes before the other writer's row exists: the race
        reads.append(keys)
        return {} if len(reads) == 1 else real_actions(keys, **kw)

    monkeypatch.setattr(ledger, "claim_actions", claim_then_other_finishes)
    monkeypatch.setattr(ledger, "actions", actions)
    tx0 = n_transactions(chain)

    if fate == "never":
        with pytest.raises(InDoubt) as info:
            run(execute_intents(chain, ledger, [other]))
        assert info.value.digest == p.digest and classify(info.value) is ErrorClass.IN_DOUBT
    else:
        (r,) = run(execute_intents(chain, ledger, [other], raise_on_failure=False))
        assert (r.status, r.digest, r.tx) == (fate, p.digest, None)
        if fate == "failed":
            assert isinstance(r.error, WrittenElsewhere) and "refused there" in str(r.error)
    assert n_transactions(chain) == tx0 + (1 if fate == "success" else 0)  # the other writer's, never this one's
    assert len(node_badges(chain, "node-1")) == (1 if fate == "success" else 0)
    row = real_actions([other.key])[other.key]
    assert (row["status"], row["digest"], row["attempts"]) == ("pending" if fate == "never" else fate, p.digest, 1)


def test_a_key_held_elsewhere_does_not_hold_back_the_rest_of_the_batch(chain, ledger, monkeypatch):
    """A batch whose one key another writer holds (and never finishes): the batch's other intents are submitted and
    recorded first; then the held key is in doubt."""
    import atoma_ops.journal as journal_module

    monkeypatch.setattr(journal_module, "CLAIM_WAIT_S", 0.2)
    held, free = register("node-1"), register("node-2")
    p, _ = run(journal_pending(chain, ledger, held))  # the other writer's claim, never submitted
    real_actions, reads = ledger.actions, []

    def actions(keys=None, **kw):  # step 1 read before the other writer's row existed
        reads.append(keys)
        return {} if len(reads) == 1 else real_actions(keys, **kw)

    monkeypatch.setattr(ledger, "actions", actions)
    with pytest.raises(InDoubt) as info:
        run(execute_intents(chain, ledger, [held, free]))
    assert info.value.digest == p.digest
    rows = real_actions([held.key, free.key])
    assert (rows[free.key]["status"], rows[free.key]["attempts"]) == ("success", 1)
    assert (rows[held.key]["status"], rows[held.key]["digest"]) == ("pending", p.digest)
    assert len(node_badges(chain, "node-2")) == 1 and node_badges(chain, "node-1") == []


_RACER = r"""
import asyncio, json, os, sys, time
from pathlib import Path
from atoma_ops import lifecycle
from atoma_ops.home import LocalnetHome

home, store, barrier, me = sys.argv[1:5]
if store.startswith("postgresql://"):
    from atoma_ops.journal_postgres import PostgresJournal
    journal = PostgresJournal(store)
else:
    from atoma_ops.ledger import Ledger
    journal = Ledger(store)
won = []

class AtTheLine:
    # the real store; each claim waits until both processes are about to claim, so both passed the preflight
    def __getattr__(self, name):
        return getattr(journal, name)
    def claim_actions(self, rows):
        Path(barrier, me).touch()
        while len(os.listdir(barrier)) < 2:
            time.sleep(0.01)
        claimed = journal.claim_actions(rows)
        won.extend(claimed)
        return claimed

chain = LocalnetHome(Path(home)).open()
node = asyncio.run(lifecycle.register_node(chain, AtTheLine(), "node-1"))
print(json.dumps({"node": node, "won": bool(won)}))
"""


def test_two_processes_registering_one_node_at_once_mint_one_badge(chain, ledger, localnet_home, tmp_path):
    """Two processes (two hosts sharing the journal) both see no badge, both sign a registration; the journal's
    claim lets exactly one submit, the other takes its outcome. One badge, one journal row, one attempt."""
    import json
    import subprocess
    import sys

    store = ledger.url if hasattr(ledger, "url") else str(ledger.path)
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    root = Path(__file__).resolve().parents[1]
    procs = [
        subprocess.Popen([sys.executable, "-c", _RACER, str(localnet_home.path), store, str(barrier), name],
                         cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for name in ("host-a", "host-b")
    ]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err[-2000:]
        outs.append(json.loads(out.strip().splitlines()[-1]))

    badges = node_badges(chain, "node-1")
    assert len(badges) == 1
    assert [o["node"] for o in outs] == [badges[0].small_id] * 2
    assert sorted(o["won"] for o in outs) == [False, True]  # both reached the claim; one got it
    assert [e.name for e in events(chain)].count("NodeRegisteredEvent") == 1
    key = f"register_node_entry:{chain.wallet.resolve('node-1')}"
    row = ledger.actions([key])[key]
    assert (row["status"], row["attempts"]) == ("success", 1)


_KILLED = r"""
import asyncio, sys
from pathlib import Path
from atoma_ops import lifecycle
from atoma_ops.home import LocalnetHome

home, store = sys.argv[1:3]
if store.startswith("postgresql://"):
    from atoma_ops.journal_postgres import PostgresJournal
    journal = PostgresJournal(store)
else:
    from atoma_ops.ledger import Ledger
    journal = Ledger(store)
asyncio.run(lifecycle.register_node(LocalnetHome(Path(home)).open(), journal, "node-1"))
print("not killed")
"""


def test_a_process_killed_after_the_journal_commit_is_finished_by_the_next_run(chain, ledger, localnet_home):
    """SIGKILL right after the signed bytes were committed, before submitting them: the next run resolves the row
    by digest and sends those very bytes, on either store. One badge, never other bytes. (Killed after the chain
    ran them: the pending-row tests above, in process.)"""
    point, executed = "journal:after-write", False
    import signal
    import subprocess
    import sys

    from atoma_ops.core.failpoints import FAILPOINTS_ENV

    store = ledger.url if hasattr(ledger, "url") else str(ledger.path)
    env = {**__import__("os").environ, FAILPOINTS_ENV: point}
    killed = subprocess.run([sys.executable, "-c", _KILLED, str(localnet_home.path), store], env=env,
                            cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    key = f"register_node_entry:{chain.wallet.resolve('node-1')}"
    row = ledger.actions([key])[key]
    assert row["status"] == "pending" and transaction_digest(row["signed_tx_bytes"]) == row["digest"]
    assert (chain.localnet.get_transaction(row["digest"]) is not None) is executed
    assert len(node_badges(chain, "node-1")) == (1 if executed else 0)

    node_id = run(lifecycle.register_node(chain, ledger, "node-1"))
    assert [b.small_id for b in node_badges(chain, "node-1")] == [node_id]
    after = ledger.actions([key])[key]
    assert (after["status"], after["digest"]) == ("success", row["digest"])
    assert after["attempts"] == (1 if executed else 2)  # re-sent once when the chain had never seen the bytes
    assert chain.localnet.get_transaction(row["digest"]).ok
