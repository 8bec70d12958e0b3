"""Several OS processes against one localnet chain file; replays; refused transactions (engine.py's promises).

* (a) processes minting, registering, subscribing and buying stacks at once: no lost update;
* (b) identical signed bytes submitted twice — in one process, and from several processes at once — execute once;
* (c) forged signature, wrong signer, another chain, another node's badge: ``TransactionRejected``, nothing changes;
* (d) a failed transaction resubmitted with the same bytes raises the same abort without re-executing.

Workers are ``python -c`` subprocesses (no pickling of test code); they wait for a "go" file so that they start
their transactions at the same moment, and report JSON on stdout.
"""

from __future__ import annotations

import base64
import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from atoma_ops.chain.errors import MoveAbort, TransactionRejected
from atoma_ops.chain.localnet.adapter import LocalnetChain
from atoma_ops.chain.localnet.engine import Localnet
from atoma_ops.protocol import money
from atoma_ops.testing.drive import run_sync
from atoma_ops.wallet import Wallet

ALIASES = ["admin", "user", "node-1", "node-2", "node-3"]
REPO = Path(__file__).resolve().parents[2]

WORKER = r"""
import json, os, sys, time
from pathlib import Path
from atoma_ops.chain.errors import ChainError
from atoma_ops.chain.localnet.adapter import LocalnetChain
from atoma_ops.chain.localnet.engine import Localnet
from atoma_ops.testing.drive import run_sync
from atoma_ops.wallet import Wallet

cfg = json.loads(sys.stdin.read())
ln = Localnet(cfg["chain"])
chain = LocalnetChain(ln, Wallet.load(cfg["client_yaml"]))
address = chain.wallet.aliases().get(cfg.get("alias", "admin"))


def outcome(call):
    try:
        r = call()
    except ChainError as exc:
        return {"ok": False, "error": exc.to_json()}
    return {"ok": True, "digest": r.digest, "status": r.status,
            "events": [[e.name, e.parsed_json] for e in r.events], "balance_changes": r.balance_changes}


def tx(function, **args):
    prepared = run_sync(chain.prepare(cfg["alias"], function, args))
    return ln.execute(prepared.tx_bytes, [chain.sign(prepared)])


Path(cfg["ready"]).touch()
deadline = time.monotonic() + 60
while not os.path.exists(cfg["go"]) and time.monotonic() < deadline:
    time.sleep(0.0005)
start = time.time()
results = []
for op in cfg["ops"]:
    kind = op[0]
    if kind == "mint":
        results.append(outcome(lambda: ln.faucet_mint(address, op[1])))
    elif kind == "register":
        results.append(outcome(lambda: tx("register_node_entry")))
    elif kind == "subscribe":
        results.append(outcome(lambda: tx("subscribe_node_to_task", task_small_id=op[1],
                                          price_per_one_million_compute_units=op[2])))
    elif kind == "acquire":
        results.append(outcome(lambda: tx("acquire_new_stack_entry", task_small_id=op[1], num_compute_units=op[2],
                                          price=op[3])))
    elif kind == "submit":  # pre-signed bytes
        results.append(outcome(lambda: ln.execute(bytes.fromhex(op[1]), [op[2]])))
    else:
        raise ValueError(kind)
end = time.time()
ln.close()
print(json.dumps({"start": start, "end": end, "results": results}))
"""


class ChainFile:
    """A fresh chain file with a wallet, driven synchronously."""

    def __init__(self, folder: Path, wallet: Wallet | None = None):
        self.folder = folder
        self.wallet = wallet or Wallet.create(folder / "wallet", ALIASES, env_alias="atoma-localnet")
        self.addr = self.wallet.aliases()
        self.path = folder / "chain.sqlite"
        self.ln = Localnet.publish(self.path, self.addr["admin"])
        self.chain = LocalnetChain(self.ln, self.wallet)

    def prepare(self, sender: str, function: str, **args: Any):
        return run_sync(self.chain.prepare(sender, function, args))

    def tx(self, sender: str, function: str, **args: Any):
        prepared = self.prepare(sender, function, **args)
        return self.ln.execute(prepared.tx_bytes, [self.chain.sign(prepared)])

    def conserved(self) -> dict:
        t = self.ln.total_usdc()
        assert t["minted"] == t["coins"] + t["fee_treasury"] + t["communal_treasury"] + t["collateral"], t
        return t

    def events_of(self, digest: str) -> int:
        return self.ln.conn.execute("SELECT count(*) FROM events WHERE tx_digest = ?", (digest,)).fetchone()[0]


@pytest.fixture
def cf(tmp_path: Path):  # not tests/chain/conftest.py's ``net``: these tests need a real file and real signatures
    n = ChainFile(tmp_path)
    yield n
    n.ln.close()


def run_workers(cf: ChainFile, jobs: list[dict], timeout: float = 120.0) -> list[list[dict]]:
    """Start one process per job, release them together, return each one's results.

    Asserts that the processes were all running their transactions at the same time.
    """
    go = cf.folder / "go"
    go.unlink(missing_ok=True)
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    procs = []
    for i, job in enumerate(jobs):
        ready = cf.folder / f"ready-{i}"
        ready.unlink(missing_ok=True)
        cfg = {"chain": str(cf.path), "client_yaml": str(cf.wallet.client_yaml), "ready": str(ready), "go": str(go)}
        cfg.update(job)
        p = subprocess.Popen([sys.executable, "-c", WORKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
        p.stdin.write(json.dumps(cfg))
        p.stdin.close()
        procs.append((p, ready))
    deadline = time.monotonic() + 60
    while not all(r.exists() for _, r in procs):
        assert time.monotonic() < deadline, "workers did not start"
        assert all(p.poll() is None for p, _ in procs), [p.stderr.read() for p, _ in procs if p.poll() is not None]
        time.sleep(0.005)
    go.touch()
    out = []
    for p, _ in procs:
        stdout = p.stdout.read()
        stderr = p.stderr.read()
        assert p.wait(timeout) == 0, stderr
        out.append(json.loads(stdout))
    assert max(o["start"] for o in out) < min(o["end"] for o in out), "the workers did not overlap"
    return [o["results"] for o in out]


# ------------------------------------------------------------------------------------------------------- (a)
def test_concurrent_processes_lose_no_update(cf: ChainFile) -> None:
    tasks = 6
    for _ in range(tasks):
        cf.tx("admin", "create_task_entry", role=0, model_name="m", security_level=None, minimum_reputation_score=None,
               is_public=True)
    cf.tx("node-1", "register_node_entry")
    for t in range(1, tasks + 1):
        cf.tx("node-1", "subscribe_node_to_task", task_small_id=t, price_per_one_million_compute_units=1)

    rounds = 30
    jobs = []
    for w, alias in enumerate(["user", "node-2", "node-3", "admin"]):
        ops: list[list] = []
        if alias.startswith("node"):
            ops.append(["register"])
            ops += [["subscribe", t, 1 + w] for t in range(1, tasks + 1)]
        for k in range(rounds):
            units, price = 1 + (k * 7919 + w * 104729) % 1_000_000, 1 + (k * 31 + w) % 3_000_000
            ops.append(["mint", 1 + money.stack_total_cost(price, units) + k])
            ops.append(["acquire", 1 + (k + w) % tasks, units, price])
        jobs.append({"alias": alias, "ops": ops})
    minted_before = cf.ln.usdc_minted()
    results = run_workers(cf, jobs)

    failures = [r for rs in results for r in rs if not r["ok"]]
    assert failures == []
    stack_ids, fees, paid_by, minted_to = [], 0, {}, {}
    for job, rs in zip(jobs, results):
        address = cf.addr[job["alias"]]
        for op, r in zip(job["ops"], rs):
            if op[0] == "mint":
                minted_to[address] = minted_to.get(address, 0) + op[1]
            if op[0] == "acquire":
                (name, ev), = r["events"]
                assert name == "StackCreatedEvent"
                stack_ids.append(int(ev["stack_small_id"]["inner"]))
                cost = money.stack_total_cost(op[3], op[2])
                assert r["balance_changes"] == ({address: -cost} if cost else {})
                fees += cost
                paid_by[address] = paid_by.get(address, 0) + cost
            assert cf.ln.get_transaction(r["digest"]).status == "success"
            assert cf.events_of(r["digest"]) == len(r["events"])

    n = len(jobs) * rounds
    assert sorted(stack_ids) == list(range(1, n + 1)), "a stack small id was lost or reused"
    cfg = cf.ln.db_config()
    assert cfg.next_stack_small_id == n + 1
    assert cfg.next_node_small_id == 4
    assert cfg.fee_treasury == fees
    assert len(cf.ln.list_stacks()) == n
    for address in minted_to:
        assert cf.ln.usdc_balance(address) == minted_to[address] - paid_by.get(address, 0)
    t = cf.conserved()
    assert t["minted"] == minted_before + sum(minted_to.values())
    for task in range(1, tasks + 1):
        assert [s.node_small_id for s in cf.ln.subscriptions(task)] == [1, 2, 3]
        assert sorted(cf.ln.get_task(task).subscribed_nodes_small_ids) == [1, 2, 3]
    counts = dict(cf.ln.conn.execute("SELECT name, count(*) FROM events GROUP BY name").fetchall())
    assert counts["StackCreatedEvent"] == n
    assert counts["NodeSubscribedToTaskEvent"] == 3 * tasks
    assert counts["NodeRegisteredEvent"] == 3


# ------------------------------------------------------------------------------------------------------- (b)
def _stack_setup(cf: ChainFile, amount: int = 10**12) -> None:
    cf.tx("admin", "create_task_entry", role=0, model_name=None, security_level=None, minimum_reputation_score=None,
           is_public=True)
    cf.tx("node-1", "register_node_entry")
    cf.tx("node-1", "subscribe_node_to_task", task_small_id=1, price_per_one_million_compute_units=1)
    cf.ln.faucet_mint(cf.addr["user"], amount)


def test_identical_bytes_execute_once(cf: ChainFile) -> None:
    _stack_setup(cf)
    prepared = cf.prepare("user", "acquire_new_stack_entry", task_small_id=1, num_compute_units=500_000,
                           price=2_000_000)
    signature = cf.chain.sign(prepared)
    first = cf.ln.execute(prepared.tx_bytes, [signature])
    after_first = cf.ln.state_digest()
    second = cf.ln.execute(prepared.tx_bytes, [signature])
    assert second.digest == first.digest == prepared.digest
    assert second.to_json() == first.to_json()
    assert cf.ln.state_digest() == after_first
    assert cf.events_of(first.digest) == 1
    assert cf.ln.db_config().next_stack_small_id == 2
    assert cf.ln.db_config().fee_treasury == 1_000_000
    # A fresh signature over the same bytes (ed25519 is deterministic, but any valid one) is still the same tx.
    third = cf.ln.execute(prepared.tx_bytes, [cf.chain.sign(prepared)])
    assert third.to_json() == first.to_json() and cf.ln.state_digest() == after_first


def test_identical_bytes_from_several_processes_execute_once(cf: ChainFile) -> None:
    _stack_setup(cf)
    txs, costs = [], []
    for k in range(60):
        units, price = 1_000 + k, 1_000_000 + k
        prepared = cf.prepare("user", "acquire_new_stack_entry", task_small_id=1, num_compute_units=units, price=price)
        txs.append((prepared, cf.chain.sign(prepared)))
        costs.append(money.stack_total_cost(price, units))
    # and one that aborts (price 0): every process must see the same abort
    bad = cf.prepare("user", "acquire_new_stack_entry", task_small_id=1, num_compute_units=1, price=0)
    txs.insert(10, (bad, cf.chain.sign(bad)))
    balance = cf.ln.usdc_balance(cf.addr["user"])
    ops = [["submit", p.tx_bytes.hex(), sig] for p, sig in txs]
    results = run_workers(cf, [{"ops": ops} for _ in range(4)])

    for i, (prepared, _) in enumerate(txs):
        seen = [json.dumps(rs[i], sort_keys=True) for rs in results]
        assert len(set(seen)) == 1, f"tx {i}: processes saw different outcomes {seen}"
        r = results[0][i]
        if prepared is bad:
            assert not r["ok"] and r["error"]["name"] == "EInvalidPricePerComputeUnit"
            assert cf.ln.get_transaction(prepared.digest).status == "failure"
        else:
            assert r["ok"] and r["digest"] == prepared.digest
            assert cf.events_of(prepared.digest) == 1
    ids = sorted(int(rs["events"][0][1]["stack_small_id"]["inner"]) for rs in results[0] if rs["ok"])
    assert ids == list(range(1, 61))
    assert cf.ln.db_config().next_stack_small_id == 61
    assert cf.ln.usdc_balance(cf.addr["user"]) == balance - sum(costs)
    assert cf.ln.db_config().fee_treasury == sum(costs)
    assert cf.ln.conn.execute("SELECT count(*) FROM transactions").fetchone()[0] == 1 + 3 + 1 + 61
    cf.conserved()


# ------------------------------------------------------------------------------------------------------- (c)
def _flip(signature: str, index: int) -> str:
    raw = bytearray(base64.b64decode(signature))
    raw[index] ^= 0x01
    return base64.b64encode(bytes(raw)).decode()


def _assert_refused(cf: ChainFile, tx_bytes: bytes, signatures: list[str], match: str) -> None:
    before = cf.ln.state_digest()
    with pytest.raises(TransactionRejected, match=match):
        cf.ln.execute(tx_bytes, signatures)
    assert cf.ln.state_digest() == before


def test_forged_wrong_signer_other_chain_and_foreign_badge_are_refused(cf: ChainFile, tmp_path: Path) -> None:
    _stack_setup(cf)
    cf.tx("node-2", "register_node_entry")
    cf.tx("user", "acquire_new_stack_entry", task_small_id=1, num_compute_units=1_000, price=1_000_000)
    prepared = cf.prepare("user", "acquire_new_stack_entry", task_small_id=1, num_compute_units=1_000, price=1_000_000)
    good = cf.chain.sign(prepared)

    for index in (1, 40, 64):  # inside the 64-byte ed25519 signature
        _assert_refused(cf, prepared.tx_bytes, [_flip(good, index)], "invalid signature")
    _assert_refused(cf, prepared.tx_bytes, [_flip(good, 70)], "invalid signature|signed by")  # the public key
    _assert_refused(cf, prepared.tx_bytes, [cf.wallet.sign("node-1", prepared.tx_bytes)], "signed by")
    _assert_refused(cf, prepared.tx_bytes, [], "exactly one signature")
    _assert_refused(cf, prepared.tx_bytes, [good, good], "exactly one signature")
    tampered = prepared.tx_bytes.replace(b'"1000"', b'"1001"', 1)
    assert tampered != prepared.tx_bytes
    _assert_refused(cf, tampered, [good], "invalid signature")

    other = ChainFile(tmp_path / "other", wallet=cf.wallet)  # same keys, another chain id
    try:
        assert other.ln.chain_id != cf.ln.chain_id
        _stack_setup(other)
        foreign = other.prepare("user", "acquire_new_stack_entry", task_small_id=1, num_compute_units=1_000,
                                price=1_000_000)
        _assert_refused(cf, foreign.tx_bytes, [other.chain.sign(foreign)], "chain")
    finally:
        other.ln.close()

    node1_badge = next(b for b in cf.ln.badges(cf.addr["node-1"]) if b.kind == "NodeBadge")
    for function, args in (
        ("withdraw_fees", {}),
        ("claim_funds", {"settled_ticket_ids": [1]}),
        ("try_settle_stack", {"stack_small_id": 1, "num_claimed_compute_units": 1, "committed_stack_proof": b"\1" * 32,
                              "stack_merkle_leaf": b"\2" * 32}),
        ("unsubscribe_node_from_task", {"task_small_id": 1}),
    ):
        stolen = cf.prepare("node-2", function, node_badge=node1_badge.object_id, **args)
        _assert_refused(cf, stolen.tx_bytes, [cf.chain.sign(stolen)], "owned by")
        assert cf.ln.get_transaction(stolen.digest) is None

    # nothing refused was recorded; the good signature still works afterwards
    assert cf.ln.get_transaction(prepared.digest) is None
    assert cf.ln.execute(prepared.tx_bytes, [good]).ok
    cf.conserved()


# ------------------------------------------------------------------------------------------------------- (d)
def test_failed_transaction_replays_its_abort_without_reexecuting(cf: ChainFile) -> None:
    _stack_setup(cf, amount=500)
    prepared = cf.prepare("user", "acquire_new_stack_entry", task_small_id=1, num_compute_units=1_000_000, price=1_000)
    signature = cf.chain.sign(prepared)
    before = cf.ln.state_digest()
    with pytest.raises(MoveAbort) as first:
        cf.ln.execute(prepared.tx_bytes, [signature])
    assert first.value.name == "EInsufficientBalance" and first.value.function == "acquire_new_stack_entry"
    assert cf.ln.state_digest() == before
    record = cf.ln.get_transaction(prepared.digest)
    assert record.status == "failure" and record.error["name"] == "EInsufficientBalance"
    assert record.events == [] and record.balance_changes == {}

    # Now the same call would succeed (the buyer has enough), but the bytes are an executed, failed transaction.
    cf.ln.faucet_mint(cf.addr["user"], 10_000)
    before = cf.ln.state_digest()
    for _ in range(2):
        with pytest.raises(MoveAbort) as again:
            cf.ln.execute(prepared.tx_bytes, [signature])
        assert (again.value.module, again.value.code) == ("db", first.value.code)
        assert again.value.name == "EInsufficientBalance"
        assert cf.ln.state_digest() == before
    assert cf.ln.get_transaction(prepared.digest).status == "failure"
    assert cf.ln.db_config().next_stack_small_id == 1
    assert cf.ln.conn.execute(
        "SELECT count(*) FROM transactions WHERE digest = ?", (prepared.digest,)
    ).fetchone()[0] == 1
    # The same call as new bytes (a new nonce) is a new transaction and succeeds.
    assert cf.tx("user", "acquire_new_stack_entry", task_small_id=1, num_compute_units=1_000_000, price=1_000).ok


# ----------------------------------------------------------------------------------- replay and failure records
def test_known_bytes_with_a_forged_signature_are_refused(cf: ChainFile) -> None:
    _stack_setup(cf)
    prepared = cf.prepare("user", "acquire_new_stack_entry", task_small_id=1, num_compute_units=1_000, price=1_000)
    good = cf.chain.sign(prepared)
    cf.ln.execute(prepared.tx_bytes, [good])
    with pytest.raises(TransactionRejected):
        cf.ln.execute(prepared.tx_bytes, [_flip(good, 1)])


def test_a_failure_reported_to_the_submitter_is_the_recorded_outcome(cf: ChainFile) -> None:
    """Process A's attempt aborts (ETaskNotFound). At the moment A records that failure, process B tries to create
    the task and run the same bytes — which would now succeed. B must not get in between: A's caller is told
    'aborted' and the chain records exactly that. (Were the failure recorded in a second write transaction after the
    rollback, B would get in, the digest would be recorded 'success' while A's caller was told 'aborted' — and a
    retry with new bytes would buy the stack twice.)"""
    _stack_setup(cf)
    prepared = cf.prepare("user", "acquire_new_stack_entry", task_small_id=2, num_compute_units=1_000, price=1_000)
    signature = cf.chain.sign(prepared)
    a = Localnet(cf.path)
    b = Localnet(cf.path, busy_timeout_s=0.2)
    b_chain = LocalnetChain(b, cf.wallet)
    original = a._record_failure
    b_got_in: list[bool] = []

    def b_tx(sender: str, function: str, **args: Any) -> None:
        p = run_sync(b_chain.prepare(sender, function, args))
        b.execute(p.tx_bytes, [b_chain.sign(p)])

    def interleaved(*args: Any, **kwargs: Any) -> Any:  # process B's turn, when A has rolled back its attempt
        try:
            b_tx("admin", "create_task_entry", role=0, model_name=None, security_level=None,
                 minimum_reputation_score=None, is_public=True)
            b_tx("node-1", "subscribe_node_to_task", task_small_id=2, price_per_one_million_compute_units=1)
            b.execute(prepared.tx_bytes, [signature])
            b_got_in.append(True)
        except sqlite3.OperationalError as exc:  # A still holds the write lock
            assert "locked" in str(exc)
            b_got_in.append(False)
        return original(*args, **kwargs)

    a._record_failure = interleaved
    try:
        try:
            outcome = a.execute(prepared.tx_bytes, [signature]).status
        except MoveAbort as exc:
            assert exc.name == "ETaskNotFound"
            outcome = "failure"
        assert b_got_in == [False], "another process ran between the failed attempt and its record"
        assert outcome == cf.ln.get_transaction(prepared.digest).status == "failure"
        assert cf.ln.db_config().next_task_small_id == 2
        with pytest.raises(MoveAbort, match="ETaskNotFound"):  # B, once A is done: the recorded failure replays
            b.execute(prepared.tx_bytes, [signature])
    finally:
        a.close()
        b.close()
