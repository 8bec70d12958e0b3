"""Reconciliation: the mirror against the chain's current state, drift reported row by row.

Compared: every stack, ticket, task and node small id the chain has issued (1 … next_small_id − 1), each task's
subscriptions, each node's ``available_fee_amount`` against the attester credits the ledger says are outstanding, the
fee and communal treasuries, and the ledger's own USDC checks (expected vs actual balance changes). Some drift has
a known cause the event log cannot show (``remove_deprecated_task_by_admin``, ``withdraw_fees`` and
``destroy_disabled_node`` emit no event; admin setters change the charge permilles silently): such rows carry a note,
but they are still drift.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from ..core.jsonable import to_jsonable
from .migrations import first

DRIFT_COLUMNS = ["entity", "key", "field", "ledger", "chain", "note"]


@dataclass
class ReconcileReport:
    drift: pd.DataFrame
    checked: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return len(self.drift) == 0

    def to_json(self) -> dict:
        return {
            "ok": self.ok,
            "checked": self.checked,
            "drift": [{k: to_jsonable(v) for k, v in row.items()} for row in self.drift.to_dict(orient="records")],
        }




def _list(v: Any) -> list:
    if v is None:
        return []
    return [int(x) for x in (v.tolist() if hasattr(v, "tolist") else v)]


def _int(v: Any) -> int | None:
    return None if v is None or (not isinstance(v, (list, bytes)) and pd.isna(v)) else int(v)


def _rows(df: pd.DataFrame, key: str) -> dict:
    return {int(r[key]): r for r in df.to_dict(orient="records")}


async def _gather(fn, ids, concurrency: int = 16) -> dict:
    sem = asyncio.Semaphore(concurrency)

    async def one(i):
        async with sem:
            return i, await fn(i)

    return dict(await asyncio.gather(*(one(i) for i in ids)))


async def reconcile(ledger, chain) -> ReconcileReport:
    drift: list[dict] = []

    def add(entity, key, field_, ledger_v, chain_v, note=""):
        drift.append(
            {"entity": entity, "key": str(key), "field": field_, "ledger": to_jsonable(ledger_v), "chain": to_jsonable(chain_v),
             "note": note}
        )

    def comparable(kind: str, key: Any, m: Any, c: Any, gone_in_ledger: bool, gone_note: str, missing_note: str = "") -> bool:
        """Record a row present on one side only; True when both sides have it and its fields are to compare."""
        if m is None or gone_in_ledger:
            if c is not None:
                add(kind, key, "exists", False, True, gone_note if m is not None else "on chain, not in the ledger")
            return False
        if c is None:
            add(kind, key, "exists", True, False, missing_note)
            return False
        return True

    # ---- the ledger's side, in one read-only unit of work
    with ledger.reader() as con:
        stacks = con.execute("SELECT * FROM stacks").df()
        tickets = con.execute("SELECT * FROM stack_settlement_tickets").df()
        tasks = con.execute("SELECT * FROM tasks").df()
        nodes = con.execute("SELECT * FROM node_credit_balances").df()
        known_nodes = {int(r[0]) for r in con.execute("SELECT node_small_id FROM nodes").fetchall()}
        subs = con.execute("SELECT * FROM node_subscriptions WHERE valid").df()
        flow = con.execute("SELECT * FROM usdc_flow").df().iloc[0].to_dict()
        mismatches = con.execute("SELECT * FROM usdc_mismatches ORDER BY tx_digest, address").df()
        cursor = first(con.execute("SELECT tx_digest, event_seq FROM indexer_cursor WHERE id = 1").fetchall())

    # ---- is the ledger at the chain's head?
    from ..chain.types import EventId

    after = None if cursor is None or cursor[0] is None else EventId(cursor[0], int(cursor[1]))
    page = await chain.events(after, 1)
    if page.events:
        add("ledger", "cursor", "behind_chain", None if after is None else after.to_json(),
            page.events[0].id.to_json(), "events exist after the ledger's cursor: sync first")

    cfg = await chain.db_config()
    stack_ids = range(1, cfg.next_stack_small_id)
    task_ids = range(1, cfg.next_task_small_id)
    node_ids = range(1, cfg.next_node_small_id)
    chain_stacks = await _gather(chain.get_stack, stack_ids)
    chain_tickets = await _gather(chain.get_ticket, stack_ids)
    chain_tasks = await _gather(chain.get_task, task_ids)
    chain_nodes = await _gather(chain.get_node, node_ids)

    # ---- stacks
    mirror = _rows(stacks, "stack_small_id")
    for sid in stack_ids:
        c = chain_stacks.get(sid)
        m = mirror.get(sid)
        if not comparable("stack", sid, m, c, m is not None and bool(m["deleted_on_chain"]),
                          "claimed by claim_funds in the ledger, still on chain"):
            continue
        for f, cv in (
            ("owner_address", c.owner),
            ("price_per_one_million_compute_units", c.price_per_one_million_compute_units),
            ("num_compute_units", c.num_compute_units),
            ("selected_node_id", c.selected_node_id),
            ("task_small_id", c.task_small_id),
            ("is_claimed", c.is_claimed),
        ):
            mv = m[f]
            mv = bool(mv) if isinstance(cv, bool) else (mv if isinstance(cv, str) else _int(mv))
            if mv != cv:
                add("stack", sid, f, mv, cv)

    # ---- tickets
    mirror_t = _rows(tickets, "stack_small_id")
    for sid in stack_ids:
        c = chain_tickets.get(sid)
        m = mirror_t.get(sid)
        if not comparable("ticket", sid, m, c, m is not None and bool(m["is_claimed"]),
                          "claimed in the ledger, still on chain"):
            continue
        checks = [
            ("selected_node_id", _int(m["selected_node_id"]), c.selected_node_id),
            ("num_claimed_compute_units", _int(m["num_claimed_compute_units"]), c.num_claimed_compute_units),
            ("requested_attestation_nodes", _list(m["requested_attestation_nodes"]), list(c.requested_attestation_nodes)),
            ("dispute_settled_at_epoch", _int(m["dispute_settled_at_epoch"]), c.dispute_settled_at_epoch),
            ("committed_stack_proof", bytes(m["committed_stack_proof"] or b""), bytes(c.committed_stack_proof)),
            ("already_attested_nodes", _list(m["already_attested_nodes"]), list(c.already_attested_nodes)),
            ("is_in_dispute", bool(m["is_in_dispute"]), c.is_in_dispute),
        ]
        leaves = bytes(m["stack_merkle_leaves"] or b"")
        if bool(m["leaves_complete"]):
            checks.append(("stack_merkle_leaves", leaves, bytes(c.stack_merkle_leaves_vector)))
        elif len(leaves) != len(c.stack_merkle_leaves_vector):
            checks.append(("stack_merkle_leaves_length", len(leaves), len(c.stack_merkle_leaves_vector)))
        for f, mv, cv in checks:
            if mv != cv:
                note = ""
                if f == "stack_merkle_leaves" and len(mv) != len(cv):
                    note = "buffer sized with the extra_nodes_count of the last sync; the admin changed it since"
                add("ticket", sid, f, mv, cv, note)

    # ---- tasks
    mirror_k = _rows(tasks, "task_small_id")
    for tid in task_ids:
        c = chain_tasks.get(tid)
        m = mirror_k.get(tid)
        if not comparable("task", tid, m, c, m is not None and bool(m["is_removed"]),
                          "removed in the ledger, still on chain",
                          "remove_deprecated_task_by_admin emits no event" if m is not None and m["is_deprecated"] else ""):
            continue
        for f, mv, cv in (
            ("security_level", _int(m["security_level"]), c.security_level),
            ("role", _int(m["role"]), c.role),
            ("model_name", m["model_name"], c.model_name),
            ("is_deprecated", bool(m["is_deprecated"]), c.is_deprecated),
            ("deprecated_at_epoch", _int(m["deprecated_at_epoch"]), c.deprecated_at_epoch),
        ):
            if mv != cv:
                add("task", tid, f, mv, cv)

    # ---- subscriptions of every live task
    live_tasks = [tid for tid in task_ids if chain_tasks.get(tid) is not None]
    chain_subs = await _gather(chain.subscriptions, live_tasks)
    mirror_s = {(int(r["task_small_id"]), int(r["node_small_id"])): r for r in subs.to_dict(orient="records")}
    chain_s = {(s.task_small_id, s.node_small_id): s for lst in chain_subs.values() for s in lst}
    for key in sorted(set(mirror_s) | set(chain_s)):
        if key[0] not in chain_subs:
            continue
        m, c = mirror_s.get(key), chain_s.get(key)
        label = f"{key[0]}:{key[1]}"
        if m is None:
            add("subscription", label, "exists", False, True)
        elif c is None:
            add("subscription", label, "exists", True, False)
        else:
            for f, mv, cv in (
                ("price_per_one_million_compute_units", _int(m["price_per_one_million_compute_units"]),
                 c.price_per_one_million_compute_units),
                ("max_num_compute_units", _int(m["max_num_compute_units"]), c.max_num_compute_units),
            ):
                if mv != cv:
                    add("subscription", label, f, mv, cv)

    # ---- nodes and their attester-credit balances
    credits = _rows(nodes, "node_small_id")
    for nid in node_ids:
        c = chain_nodes.get(nid)
        if nid not in known_nodes:
            if c is not None:
                add("node", nid, "exists", False, True, "on chain, not in the ledger")
            continue
        if c is None:
            add("node", nid, "exists", True, False, "destroy_disabled_node emits no event")
            continue
        outstanding = _int(credits.get(nid, {}).get("outstanding")) or 0
        if c.available_fee_amount != outstanding:
            add("node", nid, "available_fee_amount", outstanding, c.available_fee_amount,
                "attester credits outstanding by the ledger; withdraw_fees emits no event")

    # ---- treasuries
    expected = _int(flow.get("fee_treasury_expected"))
    if expected != cfg.fee_treasury:
        add("treasury", "fee_treasury", "balance", expected, cfg.fee_treasury,
            "paid in − node fees − refunds − attester credits withdrawn at claims")
    if cfg.communal_treasury != 0:
        add("treasury", "communal_treasury", "balance", 0, cfg.communal_treasury,
            "slashed collateral: collateral is never collected in this contract version")

    # ---- USDC moved vs the protocol rules
    for r in mismatches.to_dict(orient="records"):
        add("usdc", f"{r['tx_digest']}:{r['address']}", "balance_change", _int(r["expected"]), _int(r["actual"]),
            f"{r['status']}: {', '.join(to_jsonable(r['kinds']) or [])}")

    df = pd.DataFrame(drift, columns=DRIFT_COLUMNS)
    checked = {
        "stacks": len(stack_ids),
        "tickets": len(stack_ids),
        "tasks": len(task_ids),
        "nodes": len(node_ids),
        "subscriptions": len(chain_s),
        "chain_epoch": await chain.current_epoch(),
    }
    return ReconcileReport(df, checked)
