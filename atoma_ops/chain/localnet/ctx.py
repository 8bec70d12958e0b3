"""The execution context of one localnet transaction: the objects, events, balance changes and randomness the
contract (:mod:`.contract`) works on, which the engine (:mod:`.engine`) creates per transaction and writes back.
Its own module so that the contract and the engine both import it, and not each other."""

from __future__ import annotations

import hashlib
import sqlite3
import time
from typing import Any

from ...protocol.constants import U64_MAX
from .._json import dumps, loads

__all__ = ["Ctx", "now_ms"]


def now_ms() -> int:
    return int(time.time() * 1000)


class Ctx:
    """Everything one executing transaction can touch. ``net`` is the executing :class:`~.engine.Localnet` (its
    object rows, metadata, types and randomness); the contract (:mod:`.contract`) sees only this."""

    def __init__(self, net: Any, conn: sqlite3.Connection, sender: str, digest: str, clock: dict):
        self.net = net
        self.conn = conn
        self.sender = sender
        self.digest = digest
        self.epoch: int = clock["epoch"]
        self.timestamp_ms = now_ms()
        self.events: list[tuple[str, dict]] = []
        self.changes: dict[str, dict] = {}  # object id -> {"change", "type", "owner"}
        self.inputs: dict[str, dict] = {}  # owned input objects, mutated in place
        self.created: dict[str, tuple[str, str, str]] = {}  # new object id -> (type, owner, data JSON)
        self.balance_changes: dict[str, int] = {}
        self._ids = 0
        db_row = net._object(conn, net.db_id)
        self.db_version = db_row["version"]
        self.db: dict = db_row["data"]
        self.rng_state = loads(net._meta(conn, "rng"))
        self.rng_state_at_start = dict(self.rng_state)

    # ids, randomness
    def new_object_id(self) -> str:
        self._ids += 1
        raw = hashlib.blake2b(self.digest.encode() + self._ids.to_bytes(8, "little"), digest_size=32).digest()
        return "0x" + raw.hex()

    def random_u64(self) -> int:
        if self.net.rng is not None:
            return self.net.rng() & U64_MAX
        seed, counter = int(self.rng_state["seed"]), int(self.rng_state["counter"])
        self.rng_state["counter"] = counter + 1
        material = str(seed).encode() + b":" + counter.to_bytes(8, "little")
        return int.from_bytes(hashlib.blake2b(material, digest_size=8).digest(), "little")

    # objects
    def create_object(self, kind: str, owner: str, data: dict) -> str:
        object_id = self.new_object_id()
        # Written in _finish, once the transaction's Lamport version is known.
        self.created[object_id] = (self.net.type_of(kind), owner, dumps(data))
        self.changes[object_id] = {"change": "created", "type": self.net.type_of(kind), "owner": owner}
        return object_id

    def create_coin(self, owner: str, amount: int) -> str:
        coin_id = self.create_object("Coin", owner, {"balance": str(amount)})
        self.balance_changes[owner] = self.balance_changes.get(owner, 0) + amount
        return coin_id

    def delete_object(self, object_id: str) -> None:
        row = self.inputs.pop(object_id, None) or self.net._object(self.conn, object_id)
        self.conn.execute("DELETE FROM objects WHERE id = ?", (object_id,))
        self.changes[object_id] = {"change": "deleted", "type": row["type"], "owner": row["owner"]}
        if row["type"] == self.net.coin_type:
            bal = int(row["data"]["balance"])
            self.balance_changes[row["owner"]] = self.balance_changes.get(row["owner"], 0) - bal

    def coin_balance(self, coin: dict) -> int:
        return int(coin["data"]["balance"])

    def set_coin_balance(self, coin: dict, value: int) -> None:
        delta = value - int(coin["data"]["balance"])
        coin["data"]["balance"] = str(value)
        self.balance_changes[coin["owner"]] = self.balance_changes.get(coin["owner"], 0) + delta

    def emit(self, name: str, fields: dict) -> None:
        self.events.append((name, fields))
