"""The localnet's reads: objects, coins and badges, AtomaDb's tables (nodes, tasks, subscriptions, stacks,
tickets), the event log and the digests the reliability harness compares. A mixin of :class:`~.engine.Localnet`
(its connection, object rows and types), kept apart from transaction execution."""

from __future__ import annotations

import hashlib
from typing import Any

from ...protocol import abi
from ...wallet import normalize_address
from .._json import loads
from ..errors import InvalidArgument, NotFound
from ..types import (
    Badge,
    Coin,
    DbConfig,
    EventId,
    EventPage,
    Node,
    Stack,
    Subscription,
    Task,
    Ticket,
)


class LocalnetReads:
    """Read-only queries over ``self.conn`` (the :class:`~.engine.Localnet` this is mixed into)."""

    def get_object(self, object_id: str) -> dict | None:
        return self._object(self.conn, normalize_address(object_id))

    def owned_objects(self, address: str, kind: str | None = None) -> list[dict]:
        address = normalize_address(address)
        sql = "SELECT id, type, owner, version, data FROM objects WHERE owner = ?"
        params: tuple = (address,)
        if kind is not None:
            sql += " AND type = ?"
            params = (address, self.type_of(kind))
        rows = self.conn.execute(sql + " ORDER BY id", params).fetchall()
        return [{"id": r[0], "type": r[1], "owner": r[2], "version": r[3], "data": loads(r[4])} for r in rows]

    def usdc_coins(self, address: str) -> list[Coin]:
        coins = [Coin(o["id"], int(o["data"]["balance"]), o["version"]) for o in self.owned_objects(address, "Coin")]
        return sorted(coins, key=lambda c: (-c.balance, c.object_id))

    def usdc_balance(self, address: str) -> int:
        return sum(c.balance for c in self.usdc_coins(address))

    def badges(self, address: str) -> list[Badge]:
        prefix = f"{self.package_id}::db::"
        out = []
        for o in self.owned_objects(address):
            kind = o["type"][len(prefix):] if o["type"].startswith(prefix) else None
            if kind in abi.BADGE_KINDS:
                small = o["data"].get("small_id")
                out.append(Badge(o["id"], kind, int(small["inner"]) if small else None, o["version"]))
        return sorted(out, key=lambda b: (abi.BADGE_KINDS.index(b.kind), b.object_id))

    def db_config(self) -> DbConfig:
        data = self._object(self.conn, self.db_id)["data"]
        return DbConfig(db_id=self.db_id, package_id=self.package_id, **data)

    def _kv(self, tbl: str, key: Any) -> dict | None:
        row = self.conn.execute("SELECT value FROM kv WHERE tbl = ? AND key = ?", (tbl, str(key))).fetchone()
        return None if row is None else loads(row[0])

    def _kv_all(self, tbl: str) -> list[tuple[str, dict]]:
        rows = self.conn.execute("SELECT key, value FROM kv WHERE tbl = ?", (tbl,)).fetchall()
        return [(k, loads(v)) for k, v in rows]

    def get_node(self, node_small_id: int) -> Node | None:
        d = self._kv("nodes", node_small_id)
        if d is None:
            return None
        return Node(
            node_small_id=node_small_id,
            was_disabled_in_epoch=d["was_disabled_in_epoch"],
            collateral=d["collateral"],
            last_fee_epoch=d["last_fee_epoch"],
            last_fee_epoch_amount=d["last_fee_epoch_amount"],
            available_fee_amount=d["available_fee_amount"],
            reputation_score=d["reputation_score"],
        )

    def get_task(self, task_small_id: int) -> Task | None:
        d = self._kv("tasks", task_small_id)
        if d is None:
            return None
        return Task(task_small_id=task_small_id, **d)

    def subscriptions(self, task_small_id: int) -> list[Subscription]:
        rows = self.conn.execute(
            "SELECT key, value FROM kv WHERE tbl = 'subscribed_nodes' AND key LIKE ?", (f"{int(task_small_id)}:%",)
        ).fetchall()
        out = []
        for key, value in rows:
            d = loads(value)
            node = int(key.split(":")[1])
            out.append(Subscription(task_small_id, node, d["price_per_one_million_compute_units"], d["max_num_compute_units"]))
        return sorted(out, key=lambda s: s.node_small_id)

    def _stack(self, key: int, d: dict) -> Stack:
        return Stack(
            stack_small_id=key,
            owner=d["owner"],
            price_per_one_million_compute_units=d["price_per_one_million_compute_units"],
            num_compute_units=d["num_compute_units"],
            selected_node_id=d["selected_node_id"],
            task_small_id=d["task_small_id"],
            is_claimed=d["is_claimed"],
        )

    def get_stack(self, stack_small_id: int) -> Stack | None:
        d = self._kv("stacks", stack_small_id)
        return None if d is None else self._stack(stack_small_id, d)

    def list_stacks(self) -> list[Stack]:
        return sorted((self._stack(int(k), d) for k, d in self._kv_all("stacks")), key=lambda s: s.stack_small_id)

    def _ticket(self, key: int, d: dict) -> Ticket:
        return Ticket(
            stack_small_id=key,
            ticket_id=d["ticket_id"],
            selected_node_id=d["selected_node_id"],
            num_claimed_compute_units=d["num_claimed_compute_units"],
            requested_attestation_nodes=d["requested_attestation_nodes"],
            dispute_settled_at_epoch=d["dispute_settled_at_epoch"],
            committed_stack_proof=bytes.fromhex(d["committed_stack_proof"]),
            stack_merkle_leaves_vector=bytes.fromhex(d["stack_merkle_leaves_vector"]),
            already_attested_nodes=d["already_attested_nodes"],
            is_in_dispute=d["is_in_dispute"],
        )

    def get_ticket(self, stack_small_id: int) -> Ticket | None:
        d = self._kv("stack_settlement_tickets", stack_small_id)
        return None if d is None else self._ticket(stack_small_id, d)

    def list_tickets(self) -> list[Ticket]:
        return sorted(
            (self._ticket(int(k), d) for k, d in self._kv_all("stack_settlement_tickets")),
            key=lambda t: t.stack_small_id,
        )

    def events(self, cursor: EventId | None = None, limit: int = 50) -> EventPage:
        """Events after ``cursor`` in execution order, ``limit`` at a time (Sui's queryEvents paging)."""
        if limit < 1:
            raise InvalidArgument("limit must be >= 1")
        after = 0
        if cursor is not None:
            row = self.conn.execute(
                "SELECT seq FROM events WHERE tx_digest = ? AND event_seq = ?", (cursor.tx_digest, cursor.event_seq)
            ).fetchone()
            if row is None:
                raise NotFound(f"unknown event cursor {cursor}")
            after = row[0]
        rows = self.conn.execute(
            "SELECT tx_digest, event_seq, name, type, sender, parsed_json, timestamp_ms, epoch FROM events "
            "WHERE seq > ? ORDER BY seq LIMIT ?",
            (after, limit + 1),
        ).fetchall()
        has_next = len(rows) > limit
        events = [self._event(r[0], r[1], r[2], r[3], r[4], loads(r[5]), r[6], r[7]) for r in rows[:limit]]
        next_cursor = events[-1].id if events else cursor
        return EventPage(events, next_cursor, has_next)

    def total_usdc(self) -> dict:
        """Where every minted base unit is: coins, fee treasury, communal treasury, node collateral."""
        coins = sum(
            int(loads(r[0])["balance"])
            for r in self.conn.execute("SELECT data FROM objects WHERE type = ?", (self.coin_type,))
        )
        cfg = self.db_config()
        collateral = sum(d["collateral"] for _, d in self._kv_all("nodes"))
        return {
            "minted": self.usdc_minted(),
            "coins": coins,
            "fee_treasury": cfg.fee_treasury,
            "communal_treasury": cfg.communal_treasury,
            "collateral": collateral,
        }

    def state_digest(self) -> str:
        """A hash of the whole chain state (objects, tables, events, clock, rng), to show a call changed nothing."""
        h = hashlib.blake2b(digest_size=32)
        for sql in (
            "SELECT id, type, owner, version, data FROM objects ORDER BY id",
            "SELECT tbl, key, value FROM kv ORDER BY tbl, key",
            "SELECT seq, tx_digest, event_seq, parsed_json FROM events ORDER BY seq",
            "SELECT key, value FROM meta ORDER BY key",
        ):
            for row in self.conn.execute(sql):
                h.update(repr(row).encode())
        return h.hexdigest()
