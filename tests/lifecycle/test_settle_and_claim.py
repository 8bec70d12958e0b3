"""The try-settle and claim stages called directly, without Prefect: a localnet with stacks already served
(recorded responses, no engine), the node's real store, the ledger as the intent journal.

Hand-checked numbers: each served stack has 2 requests of 10 + 5 tokens = 30 compute units, at 1 USDC (1,000,000
base units) per million units, out of 1,000 bought; NoSecurity, so the node is paid 30 * 1,000,000 / 1,000,000 = 30
base units per stack and the buyer refunded 970.
"""

from __future__ import annotations

import asyncio
import hashlib

import pytest

from atoma_ops import lifecycle
from atoma_ops.ledger.api import Ledger, default_path
from atoma_ops.serving.metering import StackNotFound, StackNotServedHere
from atoma_ops.serving.node import NodeService
from atoma_ops.testing.served import NODE, advance_epoch, served_stacks


class CountingChain:
    """The node's real chain, counting the reads the stages make (each call goes through to the localnet)."""

    def __init__(self, chain):
        self._chain = chain
        self.reads: dict[str, int] = {}

    def __getattr__(self, name):
        attr = getattr(self._chain, name)
        if name.startswith("get_") and callable(attr):
            async def counted(*args, **kwargs):
                self.reads[name] = self.reads.get(name, 0) + 1
                return await attr(*args, **kwargs)

            return counted
        return attr


def run(coro):
    return asyncio.run(coro)


async def with_node(home, body):
    service = await NodeService.open(home, NODE)
    try:
        return await body(service)
    finally:
        await service.close()


@pytest.fixture
def served(tmp_path):
    return served_stacks(tmp_path / "ln", 3)


def test_try_settle_journals_each_stack_and_a_rerun_reports_the_same_settlement(served):
    journal = Ledger(default_path(served.home))
    ids = served.stack_small_ids

    async def settle(service):
        first = await lifecycle.try_settle_stacks(service, journal, ids)
        again = await lifecycle.try_settle_stacks(service, journal, ids)
        tickets = [await service.chain.get_ticket(s) for s in ids]
        docs = [service.store.usage(s).settlement for s in ids]
        return first, again, tickets, docs

    first, again, tickets, docs = run(with_node(served.home, settle))
    assert [s.status for s in first] == ["success"] * 3 and [s.status for s in again] == ["already_done"] * 3
    for s, ticket, doc, repeat in zip(first, tickets, docs, again):
        assert s.claimed_units == 30 and s.num_requests == 2 and ticket.num_claimed_compute_units == 30
        assert s.committed_stack_proof == "0x" + ticket.committed_stack_proof.hex()
        # the store's settlement is the whole record, the claim window included (epoch 0 + 1)
        assert doc == s.settlement_doc() and doc["dispute_settled_at_epoch"] == 1
        assert repeat.settlement_doc() == s.settlement_doc()
    rows = journal.actions([f"try_settle_stack:{s}" for s in ids])
    assert {k: list(r["stack_small_ids"]) for k, r in rows.items()} == {f"try_settle_stack:{s}": [s] for s in ids}
    assert {r["status"] for r in rows.values()} == {"success"}


def test_try_settle_commits_from_the_kept_frontier_without_reading_the_history(served, monkeypatch):
    """try-settle costs O(log N): it commits from the frontier the store folded each leaf into, and never reads a
    history back (the store's ``history`` fails here). The proof is checked by hand: 2 leaves, so
    R = H(leaf0 ‖ leaf1), leaf_i = H(u8(i) ‖ R), proof = H(leaf_0 ‖ … ‖ leaf_k), k = extra nodes."""
    journal = Ledger(default_path(served.home))
    sid = served.stack_small_ids[0]

    def h(data: bytes) -> bytes:
        return hashlib.blake2b(data, digest_size=32).digest()

    async def settle(service):
        leaves = [e.leaf for e in service.store.history(sid).entries]
        extra = (await service.chain.db_config()).cross_validation_extra_nodes_count

        def no_history(stack_small_id):
            raise AssertionError("try-settle read a whole history")

        monkeypatch.setattr(service.store, "history", no_history)
        (settled,) = await lifecycle.try_settle_stacks(service, journal, [sid])
        return leaves, extra, settled, await service.chain.get_ticket(sid)

    leaves, extra, settled, ticket = run(with_node(served.home, settle))
    assert len(leaves) == 2 and extra >= 0
    root = h(leaves[0] + leaves[1])
    proof = h(b"".join(h(bytes([i]) + root) for i in range(extra + 1)))
    assert settled.status == "success" and settled.num_requests == 2 and settled.claimed_units == 30
    assert settled.root == "0x" + root.hex()
    assert settled.committed_stack_proof == "0x" + proof.hex() == "0x" + ticket.committed_stack_proof.hex()
    assert settled.stack_merkle_leaf == "0x" + h(bytes([0]) + root).hex()
    assert ticket.num_claimed_compute_units == 30


def test_try_settle_stack_names_why_a_stack_cannot_be_settled(served):
    journal = Ledger(default_path(served.home))

    async def attempt(service, sid):
        try:
            await lifecycle.try_settle_stack(service, journal, sid)
        except Exception as exc:  # noqa: BLE001 - the test reads its type
            return exc

    assert isinstance(run(with_node(served.home, lambda svc: attempt(svc, 999))), StackNotFound)

    async def other_node(service):  # node-2 was sold none of these stacks
        return await attempt(service, served.stack_small_ids[0])

    async def as_node_2():
        async def register(service):
            return await lifecycle.register_node(service.chain, journal, "node-2")

        assert await with_node(served.home, register) == 2
        service = await NodeService.open(served.home, "node-2")
        try:
            return await other_node(service)
        finally:
            await service.close()

    error = run(as_node_2())
    assert isinstance(error, StackNotServedHere) and "sold to node 1" in str(error)
    # refused before anything was signed: nothing journaled for either stack
    assert journal.actions([f"try_settle_stack:{s}" for s in (999, served.stack_small_ids[0])]) == {}


def test_claim_uses_what_the_plan_read_and_journals_the_batch_stacks(served):
    journal = Ledger(default_path(served.home))
    ids = served.stack_small_ids
    run(with_node(served.home, lambda svc: lifecycle.try_settle_stacks(svc, journal, ids)))
    assert advance_epoch(served.home, 2) == 2  # past every ticket's window (claimable from epoch 1)

    async def claim(service):
        plan = await lifecycle.plan_claims(service, journal)
        counting = CountingChain(service.chain)
        service.chain = counting
        claimed = await lifecycle.claim_tickets(service, journal, plan.tickets, batch_size=2, facts=plan.facts)
        return plan, claimed, counting.reads

    plan, claimed, reads = run(with_node(served.home, claim))
    assert plan.tickets == ids and [f.units for f in plan.facts] == [30, 30, 30]
    assert [(c.stack_small_id, c.units, c.node_fee, c.refund, c.status) for c in claimed] == [
        (s, 30, 30, 970, "success") for s in ids
    ]
    # the amounts came from the plan: no stack, task or ticket read again to compute them; the only stack reads
    # are the journal's preflight (is the batch already claimed?), which stops at the first unclaimed stack: one
    # per batch
    assert reads == {"get_stack": 2}
    rows = journal.actions()
    batches = {k: list(r["stack_small_ids"]) for k, r in rows.items() if r["kind"] == "claim_funds"}
    assert sorted(batches.values()) == [[ids[0], ids[1]], [ids[2]]]
