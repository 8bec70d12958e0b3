"""Each operator event is emitted, with the right resource, related node and payload, when its situation arises on
the localnet, read back from the session's Prefect API (``/events/filter``).

One scenario, on one localnet, serves every event (node-1 is "our" node: the flows run with ``nodes=["node-1"]``):

- stack S0 (NoSecurity), served by node-1 through the serving kit, is settled and later claimed by
  ``settlement_run``;
- before the first settlement run, the admin's write of the lottery setting is signed and journaled ``pending``
  but never sent: the state a process killed between its journal write and its submission leaves (the journal's
  own ``claim_actions``, as ``journal:after-write`` stops it) -> ``atoma.settlement.in-doubt``;
- Sampling Consensus stacks (lottery at 1000 permille, one extra node, the chain's draws scripted):
  A sold to node-2, node-1 requested to attest and never does -> ``atoma.attestation.requested`` (its last
  accepted epoch) and, in that epoch, ``atoma.attestation.window-closing``; B sold to node-1, node-2 attests
  another commitment -> a dispute against us; C sold to node-2, node-1 attests another commitment -> a dispute by
  us; E between node-2 and node-3 -> a dispute that is none of ours (no event); D sold to node-3 and attested by
  node-3 itself: its claim pays the node fee and the attester credit, 2 x 1.2 of what D paid (quirk 10 of the
  protocol), out of the pooled fee treasury, which then holds less than S0's claim pays ->
  ``atoma.claim.refused`` and ``atoma.treasury.short``;
- a USDC threshold (Prefect Variable) above node-3's balance -> ``atoma.balance.low``.

Money by hand (atoma-protocol.md §4.9/§4.13): S0 is 1,000 units at 1 USDC per 1M units: paid 1,000; node-1 served
30 units, so its claim pays a refund of 970 and a fee of 30. A, B, C, E: 100 units at 1,000 per 1M units cost
floor(0.1) = 0. D: 500 units at 1,000,000 per 1M: paid floor(500 x 1.212) = 606; node fee floor(500 x 1.2) = 600,
attester credit 600 / 1 extra node = 600, both paid to node-3. The treasury then holds 1,000 + 606 - 1,200 = 406,
less than S0's refund of 970: the claim aborts in ``sui::balance`` (code 2, ENotEnough).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid

import pytest

from atoma_ops.home import LocalnetHome
from atoma_ops.journal import PENDING, SUCCESS
from atoma_ops.ledger.api import Ledger, default_path
from atoma_ops.lifecycle import StageError
from atoma_ops.lifecycle.task import set_cross_validation
from atoma_ops.testing.served import NODE, served_stacks
from tests.conftest import Draws

SAMPLING = 2
LOTTERY = "set_cross_validation_probability_permille"


def h(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=32).digest()


async def _read_events(label: str, expected: int, timeout: float = 30) -> list[dict]:
    """The ``atoma.*`` events about resources of the localnet ``label``, oldest first, once ``expected`` of them
    are persisted by the session's Prefect API (read again a moment later, so extra ones are seen too)."""
    from prefect.client.orchestration import get_client
    from prefect.events.worker import EventsWorker

    drained = EventsWorker.drain_all()  # an awaitable when called from a running event loop
    if drained is not None and hasattr(drained, "__await__"):
        await drained
    body = {"filter": {"event": {"prefix": ["atoma."]}, "resource": {"labels": {"atoma.network": label}},
                       "order": "ASC"}, "limit": 50}
    deadline = time.monotonic() + timeout
    async with get_client() as client:
        while True:
            found = (await client.request("POST", "/events/filter", json=body)).json()["events"]
            if len(found) >= expected or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        await asyncio.sleep(2)  # and nothing more a moment later (a duplicate would arrive with the others)
        return (await client.request("POST", "/events/filter", json=body)).json()["events"]


def _node(name: str) -> dict:
    return {"prefect.resource.id": f"atoma.node.{name}", "prefect.resource.role": "node", "prefect.resource.name": name}


def _related(event: dict, role: str) -> list[dict]:
    """The event's related resources in ``role`` (Prefect adds the emitting flow run, its flow and tags)."""
    return [r for r in event["related"] if r["prefect.resource.role"] == role]


@pytest.fixture
def scenario(tmp_path):
    """Builds the situations above, runs the flows, and returns what the tests compare the events with."""
    from prefect.variables import Variable

    from blocks import AtomaNetwork
    from flows import attestation_watch, balance_watch, settlement_run

    label = f"events-{uuid.uuid4().hex[:8]}"
    home = tmp_path / label
    served = served_stacks(home, 1)  # S0, 2 requests x 15 units, served by node-1; epoch 0
    (s0,) = served.stack_small_ids
    network = AtomaNetwork(home=str(home))
    draws = Draws()
    chain = LocalnetHome(home).open(rng=draws)
    ids: dict = {"S0": s0, "label": label, "node-1": served.node_small_id}

    async def crash_state() -> None:
        """The admin's lottery write, signed and journaled pending, never sent."""
        p = await chain.prepare("admin", LOTTERY, {"value": 1000})
        ledger = Ledger(default_path(home))
        assert ledger.claim_actions([{
            "idempotency_key": f"{LOTTERY}:1000", "kind": LOTTERY, "status": PENDING, "stack_small_id": None,
            "stack_small_ids": [], "sender": p.sender, "args": {"value": 1000}, "signed_tx_bytes": p.tx_bytes,
            "signature": chain.sign(p), "digest": p.digest, "attempt": True, "repeatable": True,
        }]) == [f"{LOTTERY}:1000"]
        ids.update(admin=p.sender, in_doubt_digest=p.digest)

    async def market() -> None:
        """The lottery write resolved (re-sent by digest), then stacks A-E on a Sampling Consensus task."""
        await set_cross_validation(chain, Ledger(default_path(home)), "admin", probability_permille=1000,
                                   extra_nodes_count=None)
        assert (await chain.db_config()).cross_validation_probability_permille == 1000
        for n in ("node-2", "node-3"):
            tx = await chain.register_node_entry(n)
            ids[n] = int(tx.event("NodeRegisteredEvent").parsed_json["node_small_id"]["inner"])
        tx = await chain.create_task_entry("admin", role=0, model_name="sc", security_level=SAMPLING)
        task = int(tx.event("TaskRegisteredEvent").parsed_json["task_small_id"]["inner"])
        for n in ("node-1", "node-2", "node-3"):  # eligible lists follow this order: index 0, 1, 2
            await chain.subscribe_node_to_task(n, task_small_id=task, price_per_one_million_compute_units=1000)

        async def settled(seller: int, attester: int, units: int = 100, price: int = 1000,
                          proof: bytes = h(b"p"), leaf: bytes = h(b"l")) -> int:
            draws.push(seller)  # the stack's node: eligible[seller]
            tx = await chain.acquire_new_stack_entry("user", task_small_id=task, num_compute_units=units, price=price)
            sid = int(tx.event("StackCreatedEvent").parsed_json["stack_small_id"]["inner"])
            draws.push(0, attester)  # the lottery fires (1 <= 1000), then draws eligible[attester]
            await chain.try_settle_stack(f"node-{seller + 1}", stack_small_id=sid, num_claimed_compute_units=units,
                                         committed_stack_proof=proof, stack_merkle_leaf=leaf)
            assert (await chain.get_ticket(sid)).requested_attestation_nodes == [ids[f"node-{attester + 1}"]]
            return sid

        async def attest(node: str, sid: int, proof: bytes, leaf: bytes = h(b"x")) -> None:
            await chain.submit_stack_settlement_attestation(node, stack_small_id=sid, committed_stack_proof=proof,
                                                            stack_merkle_leaf=leaf)

        ids["A"] = await settled(1, 0)
        ids["B"] = await settled(0, 1)
        await attest("node-2", ids["B"], h(b"another"))
        ids["C"] = await settled(1, 0)
        await attest("node-1", ids["C"], h(b"another"))
        ids["E"] = await settled(1, 2)
        await attest("node-3", ids["E"], h(b"another"))
        leaf0, leaf1 = h(b"leaf 0"), h(b"leaf 1")
        ids["D"] = await settled(2, 2, units=500, price=1_000_000, proof=h(leaf0 + leaf1), leaf=leaf0)
        await attest("node-3", ids["D"], h(leaf0 + leaf1), leaf1)
        for sid, disputed in ((ids["B"], True), (ids["C"], True), (ids["E"], True), (ids["D"], False)):
            assert (await chain.get_ticket(sid)).is_in_dispute is disputed

    async def drain_treasury() -> None:
        await chain.claim_funds("node-3", settled_ticket_ids=[ids["D"]])
        assert chain.localnet.db_config().fee_treasury == 1_000 + 606 - 1_200
        ids["node-3 address"] = chain.wallet.resolve("node-3")

    try:
        asyncio.run(crash_state())
        first = asyncio.run(settlement_run(nodes=[NODE], idle_after_s=0, network=network))
        assert [(a["action"], a["status"]) for a in first] == [("try_settle", SUCCESS), ("wait", "waiting")]
        asyncio.run(market())
        with pytest.raises(StageError, match="no history of stack"):  # A: node-1 cannot replay it
            asyncio.run(attestation_watch(nodes=[NODE], network=network))
        asyncio.run(chain.advance_epoch(1))  # epoch 1: A's last epoch; S0 claimable
        with pytest.raises(StageError, match="no history of stack"):
            asyncio.run(attestation_watch(nodes=[NODE], network=network))
        asyncio.run(drain_treasury())
        with pytest.raises(StageError, match="could not be settled"):
            asyncio.run(settlement_run(nodes=[NODE], idle_after_s=0, network=network))
        asyncio.run(Variable.aset("atoma_ops_min_usdc", {"node-3": 1_201}, overwrite=True))
        try:
            (low,) = asyncio.run(balance_watch(network=network))
        finally:
            asyncio.run(Variable.aunset("atoma_ops_min_usdc"))
        assert (low["alias"], low["coin"], low["balance"]) == ("node-3", "USDC", 1_200)
        journal = Ledger(default_path(home)).actions([f"{LOTTERY}:1000"])
        assert journal[f"{LOTTERY}:1000"]["status"] == SUCCESS  # the in-doubt write, resolved by digest
    finally:
        chain.localnet.close()
    ids["events"] = asyncio.run(_read_events(label, 10))
    return ids


def test_each_operator_event_is_emitted_once_its_situation_arises(scenario):
    s = scenario
    events = s["events"]
    for e in events:
        assert e["resource"]["atoma.network"] == s["label"]
        assert e["payload"]["what_to_do"]  # the notification's text
        (run,) = _related(e, "flow-run")  # the run that found it, named after its flow and network
        flow = "balance-watch" if e["event"] == "atoma.balance.low" else (
            "attestation-watch" if e["event"].startswith(("atoma.attestation.", "atoma.dispute.")) else "settlement-run")
        assert run["prefect.resource.name"].startswith(f"{flow} {s['label']}"), (e["event"], run)
    by_name: dict[str, list[dict]] = {}
    for e in events:
        by_name.setdefault(e["event"], []).append(e)
    assert {name: len(found) for name, found in by_name.items()} == {
        "atoma.settlement.in-doubt": 1,  # the second run found the write resolved
        "atoma.attestation.requested": 2,  # A, once per watch run while it is owed
        "atoma.dispute.opened": 2,  # B and C once each, though the watch ran twice; E is none of ours
        "atoma.attestation.window-closing": 1,  # A, in its last epoch only (threshold 0 epochs)
        "atoma.ticket.claimable": 1,  # S0
        "atoma.claim.refused": 1,  # S0
        "atoma.treasury.short": 1,
        "atoma.balance.low": 1,  # node-3's USDC
    }

    (doubt,) = by_name["atoma.settlement.in-doubt"]
    assert doubt["resource"]["prefect.resource.id"] == f"atoma.address.{s['admin']}"
    assert _related(doubt, "node") == []
    assert {k: doubt["payload"][k] for k in ("sender", "count", "intents", "digests")} == {
        "sender": s["admin"], "count": 1, "intents": [f"{LOTTERY}:1000"], "digests": [s["in_doubt_digest"]],
    }

    requested = by_name["atoma.attestation.requested"]
    for e in requested:
        assert e["resource"]["prefect.resource.id"] == f"atoma.stack.{s['A']}"
        assert _related(e, "node") == [_node(NODE)]
    assert [{k: e["payload"][k] for k in ("stack_small_id", "node", "last_epoch", "epoch")} for e in requested] == [
        {"stack_small_id": s["A"], "node": NODE, "last_epoch": 1, "epoch": 0},  # settled in epoch 0: accepted to 1
        {"stack_small_id": s["A"], "node": NODE, "last_epoch": 1, "epoch": 1},
    ]

    (closing,) = by_name["atoma.attestation.window-closing"]
    assert closing["resource"]["prefect.resource.id"] == f"atoma.stack.{s['A']}"
    assert _related(closing, "node") == [_node(NODE)]
    p = closing["payload"]
    assert (p["stack_small_id"], p["node"], p["last_epoch"], p["epoch"], p["epochs_left"], p["closed"]) == (
        s["A"], NODE, 1, 1, 0, False)
    assert f"no history of stack {s['A']}" in p["why"]

    disputes = {e["payload"]["stack_small_id"]: e for e in by_name["atoma.dispute.opened"]}
    assert sorted(disputes) == sorted([s["B"], s["C"]])
    for sid, e in disputes.items():
        assert e["resource"]["prefect.resource.id"] == f"atoma.stack.{sid}"
        assert _related(e, "node") == [_node(NODE)]
    against, by = disputes[s["B"]]["payload"], disputes[s["C"]]["payload"]
    assert (against["against_us"], against["by_us"], against["node"]) == (True, False, NODE)
    assert (against["original_node_id"], against["attestation_node_id"], against["epoch"]) == (s["node-1"], s["node-2"], 0)
    assert (by["against_us"], by["by_us"], by["node"]) == (False, True, NODE)
    assert (by["original_node_id"], by["attestation_node_id"], by["epoch"]) == (s["node-2"], s["node-1"], 0)

    (claimable,) = by_name["atoma.ticket.claimable"]
    assert claimable["resource"]["prefect.resource.id"] == f"atoma.stack.{s['S0']}"
    assert claimable["payload"]["stack_small_id"] == s["S0"] and _related(claimable, "node") == [_node(NODE)]

    (refused,) = by_name["atoma.claim.refused"]
    assert refused["resource"]["prefect.resource.id"] == f"atoma.stack.{s['S0']}"
    assert _related(refused, "node") == [_node(NODE)]
    p = refused["payload"]
    assert (p["stack_small_id"], p["node"], p["treasury_short"]) == (s["S0"], NODE, True)
    assert p["error"].startswith("MoveAbort") and "ENotEnough" in p["error"]

    (short,) = by_name["atoma.treasury.short"]
    assert short["resource"]["prefect.resource.id"] == f"atoma.node.{NODE}"
    assert (short["payload"]["node"], short["payload"]["stacks"]) == (NODE, [s["S0"]])
    assert "ENotEnough" in short["payload"]["error"]

    (low,) = by_name["atoma.balance.low"]
    assert low["resource"]["prefect.resource.id"] == f"atoma.address.{s['node-3 address']}"
    assert low["resource"]["prefect.resource.name"] == "node-3"
    assert {k: low["payload"][k] for k in ("address", "alias", "coin", "balance", "threshold")} == {
        "address": s["node-3 address"], "alias": "node-3", "coin": "USDC", "balance": 1_200, "threshold": 1_201,
    }
