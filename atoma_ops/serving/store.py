"""The serving node's durable store: per-stack usage, in-flight reservations and the stack history, in SQLite.

One file per node (``<home>/nodes/<alias>/serving.sqlite``), WAL, ``synchronous=FULL``. Every change is one
``BEGIN IMMEDIATE … COMMIT``, so several processes serving for the same node share the file without lost updates:

- ``reserve``: for each request, ``reserved_units += estimate`` only if the stack is open and
  ``num_compute_units − used_units − reserved_units ≥ estimate``;
- ``settle``: for each served request, in ONE transaction, ``used_units += charged``, ``reserved_units −= estimate``,
  the reservation row deleted and the history record (request bytes, response bytes, units, hashes, serving index)
  appended — so a response is never returned without being in the history, and a history record never exists
  without its units being charged;
- ``release``: a failed request gives its whole reservation back.

A ``CHECK (used_units + reserved_units <= num_compute_units)`` on the stacks table backs the arithmetic: no code
path can make usage pass the stack's units.

Reservations are *leases*: each carries an expiry (``expires_ms``), which the process serving its request renews
while the request runs (:meth:`NodeStore.renew`, every third of the lease). A reservation whose lease expired belongs
to a process that stopped renewing — killed, hung, or on a host that went away — and :meth:`NodeStore.recover`
releases it (a crashed server must not pin units forever). Whether the holder lives is never judged by a pid: a pid
means nothing in another container's pid namespace or on another host.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import orjson

from .._sqlite import connect_wal, immediate
from ..home import node_store_path
from ..protocol.commitments import MerkleFrontier, canonical_json, canonical_request
from ..protocol.compute_units import actual_units
from .history import HistoryEntry, StackHistory
from .metering import InsufficientUnits, NothingToCommit, ServingError, StackBusy, StackSettling
from .usage_feed import install_usage_feed


SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS stacks (
    stack_small_id INTEGER PRIMARY KEY,
    num_compute_units INTEGER NOT NULL,
    selected_node_id INTEGER NOT NULL,
    task_small_id INTEGER NOT NULL,
    owner TEXT NOT NULL,
    price_per_one_million_compute_units INTEGER NOT NULL,
    used_units INTEGER NOT NULL DEFAULT 0,
    reserved_units INTEGER NOT NULL DEFAULT 0,
    num_requests INTEGER NOT NULL DEFAULT 0,
    overrun_units INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL DEFAULT 'open' CHECK (state IN ('open', 'settling', 'settled')),
    settlement TEXT,
    CHECK (used_units >= 0 AND reserved_units >= 0 AND used_units + reserved_units <= num_compute_units)
);
CREATE TABLE IF NOT EXISTS reservations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    stack_small_id INTEGER NOT NULL REFERENCES stacks (stack_small_id),
    units INTEGER NOT NULL CHECK (units > 0),
    holder TEXT NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS reservations_by_stack ON reservations (stack_small_id);
CREATE TABLE IF NOT EXISTS history (
    stack_small_id INTEGER NOT NULL REFERENCES stacks (stack_small_id),
    idx INTEGER NOT NULL,
    request BLOB NOT NULL,
    response BLOB NOT NULL,
    units INTEGER NOT NULL,
    usage_units INTEGER NOT NULL,
    reserved_units INTEGER NOT NULL,
    payload_hash BLOB NOT NULL,
    response_hash BLOB NOT NULL,
    leaf BLOB NOT NULL,
    served_at_ms INTEGER NOT NULL,
    PRIMARY KEY (stack_small_id, idx)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS refusals (
    stack_small_id INTEGER NOT NULL,
    request_id TEXT NOT NULL,
    type TEXT NOT NULL,
    message TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    PRIMARY KEY (stack_small_id, request_id)
) WITHOUT ROWID;
"""

#: columns added after the first release, with their declarations (a store from before gets them on open)
ADDED_COLUMNS = {
    "history": {
        "request_id": "TEXT",  # the client's idempotency key (X-Request-Id, a workload line), if any
        "seed": "INTEGER",  # the seed drawn for a sampled request that named none (a replay reuses it)
        "arrived_ms": "INTEGER",  # when the request arrived (served_at_ms: when it finished)
        "first_token_ms": "INTEGER",  # when its first token was produced
    },
    "stacks": {
        "frontier": "BLOB",  # MerkleFrontier of the history's leaves, folded as each is stored
    },
    "reservations": {
        "expires_ms": "INTEGER",  # the lease: renewed while the request runs; past it, the reservation is stale
    },
}

#: how long a reservation's lease lasts unless renewed (seconds; ``$ATOMA_OPS_RESERVATION_LEASE_S`` overrides):
#: long beside a renewal (every third of it), short beside the time a dead holder's units stay pinned
RESERVATION_LEASE_S = 30.0
RESERVATION_LEASE_ENV = "ATOMA_OPS_RESERVATION_LEASE_S"


def default_lease_s() -> float:
    value = os.environ.get(RESERVATION_LEASE_ENV)
    try:
        lease = float(value) if value else RESERVATION_LEASE_S
    except ValueError:
        raise ValueError(f"${RESERVATION_LEASE_ENV} must be a number of seconds, not {value!r}") from None
    if not lease > 0:
        raise ValueError(f"${RESERVATION_LEASE_ENV} must be positive, not {value!r}")
    return lease
INDEXES = (
    "CREATE UNIQUE INDEX IF NOT EXISTS history_request_id ON history (stack_small_id, request_id) "
    "WHERE request_id IS NOT NULL",
)


@dataclass(frozen=True)
class StackFacts:
    """The on-chain facts of a stack the store needs (immutable once the stack is bought)."""

    stack_small_id: int
    num_compute_units: int
    selected_node_id: int
    task_small_id: int
    owner: str
    price_per_one_million_compute_units: int

    @classmethod
    def of(cls, stack) -> "StackFacts":
        return cls(
            stack.stack_small_id,
            stack.num_compute_units,
            stack.selected_node_id,
            stack.task_small_id,
            stack.owner,
            stack.price_per_one_million_compute_units,
        )


@dataclass(frozen=True)
class StackUsage:
    stack_small_id: int
    num_compute_units: int
    used_units: int
    reserved_units: int
    num_requests: int
    in_flight: int
    overrun_units: int
    state: str
    selected_node_id: int
    task_small_id: int
    settlement: dict | None

    @property
    def units_left(self) -> int:
        return self.num_compute_units - self.used_units - self.reserved_units

    def to_json(self) -> dict:
        return {
            "stack_small_id": self.stack_small_id,
            "num_compute_units": self.num_compute_units,
            "used_units": self.used_units,
            "reserved_units": self.reserved_units,
            "units_left": self.units_left,
            "num_requests": self.num_requests,
            "in_flight": self.in_flight,
            "overrun_units": self.overrun_units,
            "state": self.state,
            "selected_node_id": self.selected_node_id,
            "task_small_id": self.task_small_id,
            "settlement": self.settlement,
        }


@dataclass(frozen=True)
class Reservation:
    id: int
    stack_small_id: int
    units: int


@dataclass(frozen=True)
class Settlement:
    """A served request to settle: its reservation, the request as received and the response as returned."""

    reservation: Reservation
    request: dict
    response: dict
    request_id: str | None = None
    seed: int | None = None
    arrived_ms: int | None = None
    first_token_ms: int | None = None
    finished_ms: int | None = None


@dataclass(frozen=True)
class Settled:
    entry: HistoryEntry
    stack_small_id: int
    units_left: int
    duplicate: bool = False  # the request id was already in the history: nothing charged, the first entry returned


class NodeStore:
    """A node's serving store. Thread-safe (one connection behind a lock); several processes may open one file.

    Args:
        path: the SQLite file (created with its folder if missing).
        busy_timeout_s: how long a writer waits for another process's transaction.
        lease_s: how long this store's reservations hold unless renewed (default :func:`default_lease_s`).
    """

    def __init__(self, path: str | os.PathLike, *, busy_timeout_s: float = 60.0, lease_s: float | None = None):
        self.path = Path(path)
        self.lease_ms = int((lease_s if lease_s is not None else default_lease_s()) * 1000)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._busy_timeout_ms = int(busy_timeout_s * 1000)
        self.conn = connect_wal(self.path, busy_timeout_s)
        self.conn.execute("PRAGMA foreign_keys=ON")
        with self._tx() as c:
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    c.execute(statement)
            for table, columns in ADDED_COLUMNS.items():
                have = {row[1] for row in c.execute(f"PRAGMA table_info({table})")}
                for name, decl in columns.items():
                    if name not in have:
                        c.execute(f"ALTER TABLE {table} ADD COLUMN {name} {decl}")
            for statement in INDEXES:
                c.execute(statement)
            install_usage_feed(c)  # every served request numbered, for readers on other hosts (usage_feed.py)
        # who holds this store's reservations (diagnostics; liveness is the lease): host, pid, a unique token
        self.holder = f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:12]}"

    @staticmethod
    def path_for(home: str | os.PathLike, node: str) -> Path:
        """``<home>/nodes/<node>/serving.sqlite`` (the home's layout: :func:`atoma_ops.home.node_store_path`)."""
        return node_store_path(home, node)

    def close(self) -> None:
        with self._lock:
            self.conn.close()

    def __enter__(self) -> "NodeStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _tx(self, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """One write transaction. ``durable=False`` commits without waiting for the disk (WAL with
        ``synchronous=NORMAL``: safe against a crash of the process, not of the machine), for writes a lost commit
        cannot hurt: a reservation that vanishes with a power cut held nothing that was charged."""
        with self._lock:
            if not durable:
                self.conn.execute("PRAGMA synchronous=NORMAL")
            try:
                with immediate(self.conn) as conn:
                    yield conn
            finally:
                if not durable:
                    self.conn.execute("PRAGMA synchronous=FULL")

    # ------------------------------------------------------------------ identity
    def bind_node(self, node_small_id: int, address: str) -> None:
        """Record which node this store serves; refuse to serve another node's stacks from the same file."""
        with self._tx() as c:
            row = c.execute("SELECT value FROM meta WHERE key = 'node'").fetchone()
            if row is None:
                c.execute(
                    "INSERT INTO meta VALUES ('node', ?)",
                    (json.dumps({"node_small_id": node_small_id, "address": address}),),
                )
                return
            bound = json.loads(row[0])
            if bound["node_small_id"] != node_small_id:
                raise ValueError(
                    f"{self.path} belongs to node {bound['node_small_id']} ({bound['address']}), not node {node_small_id}"
                )

    def node(self) -> dict | None:
        with self._lock:
            row = self.conn.execute("SELECT value FROM meta WHERE key = 'node'").fetchone()
        return None if row is None else json.loads(row[0])

    # ------------------------------------------------------------------ metering
    def reserve(self, items: Sequence[tuple[StackFacts, int]]) -> list[Reservation | Exception]:
        """Reserve ``units`` on each stack, in order, in one transaction. Each item gets a Reservation, or the
        refusal (InsufficientUnits / StackSettling) and nothing is reserved for it."""
        now = int(time.time() * 1000)
        out: list[Reservation | Exception] = []
        with self._tx(durable=False) as c:
            for facts, units in items:
                c.execute(
                    "INSERT OR IGNORE INTO stacks (stack_small_id, num_compute_units, selected_node_id, task_small_id, "
                    "owner, price_per_one_million_compute_units) VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        facts.stack_small_id,
                        facts.num_compute_units,
                        facts.selected_node_id,
                        facts.task_small_id,
                        facts.owner,
                        facts.price_per_one_million_compute_units,
                    ),
                )
                num, used, reserved, state = c.execute(
                    "SELECT num_compute_units, used_units, reserved_units, state FROM stacks WHERE stack_small_id = ?",
                    (facts.stack_small_id,),
                ).fetchone()
                if state != "open":
                    out.append(
                        StackSettling(
                            f"stack {facts.stack_small_id} is being settled by this node ({state}); it takes no more "
                            "requests (nothing charged)",
                            stack_small_id=facts.stack_small_id,
                        )
                    )
                    continue
                left = num - used - reserved
                if units > left and reserved and self._release_expired(c, now, facts.stack_small_id):
                    # a dead holder's expired lease holds nothing: its units come back here, not only when a
                    # process with requests in flight renews its leases or the node restarts
                    used, reserved = c.execute(
                        "SELECT used_units, reserved_units FROM stacks WHERE stack_small_id = ?", (facts.stack_small_id,)
                    ).fetchone()
                    left = num - used - reserved
                if units > left:
                    wait = self._lease_wait_s(c, facts.stack_small_id, now, units, left) if reserved else None
                    out.append(insufficient(facts.stack_small_id, num, used, reserved, units, retry_after_s=wait))
                    continue
                cur = c.execute(
                    "INSERT INTO reservations (stack_small_id, units, holder, created_ms, expires_ms) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (facts.stack_small_id, units, self.holder, now, now + self.lease_ms),
                )
                c.execute(
                    "UPDATE stacks SET reserved_units = reserved_units + ? WHERE stack_small_id = ?",
                    (units, facts.stack_small_id),
                )
                out.append(Reservation(int(cur.lastrowid), facts.stack_small_id, units))
        return out

    def _lease_wait_s(self, c: sqlite3.Connection, sid: int, now: int, units: int, left: int) -> int | None:
        """Seconds until the earliest lease of another holder's reservation on the stack expires (rounded up, at
        least 1), when the request is short of units only because of such reservations (it would fit without
        them); else None. A live holder renews its lease and may end sooner; a dead one's units come back then."""
        others, earliest = c.execute(
            "SELECT COALESCE(SUM(units), 0), MIN(COALESCE(expires_ms, created_ms + ?)) FROM reservations "
            "WHERE stack_small_id = ? AND holder <> ?",
            (self.lease_ms, sid, self.holder),
        ).fetchone()
        if not others or units > left + others:
            return None
        return max(1, -(-(int(earliest) - now) // 1000))

    def reserve_now(self, items: Sequence[tuple[StackFacts, int]]) -> list[Reservation | Exception] | None:
        """:meth:`reserve` if it can run at once without waiting (this store's lock free, no other process writing
        the file), else None and nothing reserved. For a caller on an event loop: the transaction (~0.1 ms, never
        synced to disk) costs less than a hop to a worker thread and back, but waiting on a lock there would stall
        every request of the loop."""
        if not self._lock.acquire(blocking=False):
            return None
        try:
            self.conn.execute("PRAGMA busy_timeout=0")
            try:
                return self.reserve(items)
            except sqlite3.OperationalError as exc:
                if "locked" in str(exc) or "busy" in str(exc):  # another process's transaction: not now
                    return None
                raise
            finally:
                self.conn.execute(f"PRAGMA busy_timeout={self._busy_timeout_ms}")
        finally:
            self._lock.release()

    def release(self, reservations: Sequence[Reservation]) -> None:
        """Give reservations back whole (the requests failed: nothing is charged)."""
        if not reservations:
            return
        with self._tx(durable=False) as c:
            for r in reservations:
                self._drop_reservation(c, r)

    @staticmethod
    def _drop_reservation(c: sqlite3.Connection, r: Reservation) -> int:
        """Delete a reservation row and return the units it still held (0 if it was already released)."""
        row = c.execute("SELECT units FROM reservations WHERE id = ?", (r.id,)).fetchone()
        if row is None:
            return 0
        c.execute("DELETE FROM reservations WHERE id = ?", (r.id,))
        c.execute(
            "UPDATE stacks SET reserved_units = reserved_units - ? WHERE stack_small_id = ?", (row[0], r.stack_small_id)
        )
        return int(row[0])

    def settle(self, settlements: Sequence[Settlement]) -> list[Settled]:
        """Charge each served request its actual usage and append it to its stack's history, all in ONE transaction
        (in the given order, which is the serving order).

        Charged = ``usage.prompt_tokens + usage.completion_tokens``, capped at what the reservation plus the stack's
        free units can cover (only an engine that under-reports its templated prompt can get there; the shortfall
        is recorded in ``overrun_units``), so ``used_units`` never passes ``num_compute_units``.
        """
        now = int(time.time() * 1000)
        out: list[Settled] = []
        with self._tx() as c:
            for s in settlements:
                sid = s.reservation.stack_small_id
                self._drop_reservation(c, s.reservation)
                num, used, reserved, count, frontier = c.execute(
                    "SELECT num_compute_units, used_units, reserved_units, num_requests, frontier FROM stacks "
                    "WHERE stack_small_id = ?",
                    (sid,),
                ).fetchone()
                if s.request_id is not None:
                    first = self._entry_by_request_id(c, sid, s.request_id)
                    if first is not None:
                        out.append(Settled(first, sid, num - used - reserved, duplicate=True))
                        continue
                usage_units = actual_units(s.response.get("usage") or {})
                charged = min(usage_units, num - used - reserved)
                overrun = usage_units - charged
                finished = s.finished_ms if s.finished_ms is not None else now
                entry = HistoryEntry.build(
                    count, s.request, s.response, units=charged, usage_units=usage_units,
                    reserved_units=s.reservation.units, served_at_ms=finished, request_id=s.request_id, seed=s.seed,
                    arrived_ms=s.arrived_ms, first_token_ms=s.first_token_ms,
                )
                folded = (MerkleFrontier.from_bytes(frontier) if frontier else self._frontier_of(c, sid)).fold(entry.leaf)
                c.execute(
                    f"INSERT INTO history ({HISTORY_COLUMNS}) VALUES ({', '.join('?' * HISTORY_ARITY)})",
                    (
                        sid, entry.index, canonical_request(s.request), canonical_json(s.response), entry.units,
                        entry.usage_units, entry.reserved_units, entry.payload_hash, entry.response_hash, entry.leaf,
                        finished, s.request_id, s.seed, s.arrived_ms, s.first_token_ms,
                    ),
                )
                c.execute(
                    "UPDATE stacks SET used_units = used_units + ?, num_requests = num_requests + 1, "
                    "overrun_units = overrun_units + ?, frontier = ? WHERE stack_small_id = ?",
                    (charged, overrun, folded.to_bytes(), sid),
                )
                out.append(Settled(entry, sid, num - used - charged - reserved))
        return out

    @staticmethod
    def _frontier_of(c: sqlite3.Connection, sid: int) -> MerkleFrontier:
        """The frontier of a history stored before frontiers were kept (folded once from its leaves)."""
        rows = c.execute("SELECT leaf FROM history WHERE stack_small_id = ? ORDER BY idx", (sid,))
        return MerkleFrontier.from_leaves(bytes(leaf) for (leaf,) in rows)

    def _entry_by_request_id(self, c: sqlite3.Connection, sid: int, request_id: str) -> HistoryEntry | None:
        row = c.execute(
            f"SELECT {ENTRY_COLUMNS} FROM history WHERE stack_small_id = ? AND request_id = ?", (sid, request_id)
        ).fetchone()
        return None if row is None else _entry(row)

    # ------------------------------------------------------------------ idempotency keys
    def find_request(self, stack_small_id: int, request_id: str) -> HistoryEntry | dict | None:
        """What became of a request id on a stack: its history entry (served), its refusal record
        (``{"type", "message", "at_ms"}``), or None (never seen)."""
        with self._lock:
            entry = self._entry_by_request_id(self.conn, stack_small_id, request_id)
            if entry is not None:
                return entry
            row = self.conn.execute(
                "SELECT type, message, at_ms FROM refusals WHERE stack_small_id = ? AND request_id = ?",
                (stack_small_id, request_id),
            ).fetchone()
        return None if row is None else {"type": row[0], "message": row[1], "at_ms": row[2]}

    def record_refusal(self, stack_small_id: int, request_id: str, type_: str, message: str) -> None:
        """Remember that a request id was refused (the first refusal stands), so a workload re-run skips it.

        A ``stack_in_settlement`` refusal is not recorded once the store has the stack open again (a settlement
        aborted between the refusal and this record: :meth:`abort_settlements` dropped the ones before)."""
        sql, args = "INSERT OR IGNORE INTO refusals SELECT ?, ?, ?, ?, ?", [stack_small_id, request_id, type_, message]
        args.append(int(time.time() * 1000))
        if type_ == StackSettling.type:
            sql += " WHERE NOT EXISTS (SELECT 1 FROM stacks WHERE stack_small_id = ? AND state = 'open')"
            args.append(stack_small_id)
        with self._tx(durable=False) as c:
            c.execute(sql, args)

    def request_ids(self, stack_small_id: int, prefix: str = "") -> dict[str, str]:
        """Every request id seen on a stack (starting with ``prefix``): ``"served"`` or ``"refused"``."""
        with self._lock:
            served = self.conn.execute(
                "SELECT request_id FROM history WHERE stack_small_id = ? AND substr(request_id, 1, ?) = ?",
                (stack_small_id, len(prefix), prefix),
            ).fetchall()
            refused = self.conn.execute(
                "SELECT request_id FROM refusals WHERE stack_small_id = ? AND substr(request_id, 1, ?) = ?",
                (stack_small_id, len(prefix), prefix),
            ).fetchall()
        out = {r: "refused" for (r,) in refused}
        out.update({r: "served" for (r,) in served})
        return out

    def frontier(self, stack_small_id: int) -> tuple[int, int, MerkleFrontier] | None:
        """``(num_requests, used_units, frontier)`` of a stack's history, or None when never served: what a
        commitment needs, in O(log N) instead of reading every leaf."""
        with self._lock:
            row = self.conn.execute(
                "SELECT num_requests, used_units, frontier FROM stacks WHERE stack_small_id = ?", (stack_small_id,)
            ).fetchone()
            if row is None or row[0] == 0:
                return None
            frontier = MerkleFrontier.from_bytes(row[2]) if row[2] else self._frontier_of(self.conn, stack_small_id)
        return int(row[0]), int(row[1]), frontier

    def renew(self, *, now_ms: int | None = None) -> int:
        """Extend the lease of every reservation this store holds (its requests are still running), and release
        other holders' expired ones, in one transaction; returns how many were released."""
        now = int(time.time() * 1000) if now_ms is None else now_ms
        with self._tx(durable=False) as c:
            c.execute("UPDATE reservations SET expires_ms = ? WHERE holder = ?", (now + self.lease_ms, self.holder))
            return self._release_expired(c, now)

    def recover(self, *, now_ms: int | None = None) -> int:
        """Release reservations whose lease expired (their holder stopped renewing: it died, hung or went away);
        returns how many. This store's own are never stale to it: its requests renew them."""
        now = int(time.time() * 1000) if now_ms is None else now_ms
        with self._tx() as c:
            return self._release_expired(c, now)

    def _release_expired(self, c: sqlite3.Connection, now: int, stack_small_id: int | None = None) -> int:
        # a row from before leases has none: its lease is counted from its creation
        rows = c.execute(
            "SELECT id, stack_small_id, units FROM reservations WHERE holder <> ? "
            f"AND COALESCE(expires_ms, created_ms + ?) <= ?{' AND stack_small_id = ?' if stack_small_id is not None else ''}",
            (self.holder, self.lease_ms, now, *(() if stack_small_id is None else (stack_small_id,))),
        ).fetchall()
        for i, sid, units in rows:
            self._drop_reservation(c, Reservation(i, sid, units))
        return len(rows)

    def lease_expiry_ms(self) -> int | None:
        """When the last lease held now expires (epoch ms), or None without reservations: by then, every
        reservation of a holder that stopped renewing is stale."""
        with self._lock:
            (latest,) = self.conn.execute(
                "SELECT max(COALESCE(expires_ms, created_ms + ?)) FROM reservations", (self.lease_ms,)
            ).fetchone()
        return None if latest is None else int(latest)

    # ------------------------------------------------------------------ settlement state
    def begin_settlement(self, stack_small_id: int) -> str:
        """Stop taking requests on a stack before committing to its history. Returns the state before (``open``,
        ``settling`` after an interrupted attempt, or ``settled``).

        Raises:
            NothingToCommit: the stack was never served here.
            StackBusy: requests are in flight on it (try again when they are done).
        """
        (result,) = self.begin_settlements([stack_small_id])
        if isinstance(result, Exception):
            raise result
        return result

    def begin_settlements(self, stack_small_ids: Sequence[int]) -> list[str | ServingError]:
        """:meth:`begin_settlement` for many stacks in one transaction: the state before, or the refusal."""
        out: list[str | ServingError] = []
        with self._tx() as c:
            for sid in stack_small_ids:
                row = c.execute("SELECT state, num_requests FROM stacks WHERE stack_small_id = ?", (sid,)).fetchone()
                if row is None or row[1] == 0:
                    out.append(NothingToCommit(
                        f"stack {sid} has no served requests on this node: nothing to commit", stack_small_id=sid
                    ))
                    continue
                state = row[0]
                if state == "open":
                    self._release_expired(c, int(time.time() * 1000), sid)  # a dead holder's lease blocks nothing
                    (n,) = c.execute("SELECT COUNT(*) FROM reservations WHERE stack_small_id = ?", (sid,)).fetchone()
                    if n:
                        out.append(StackBusy(
                            f"stack {sid} has {n} request(s) in flight; settle it when they are done",
                            stack_small_id=sid,
                            in_flight=n,
                        ))
                        continue
                    c.execute("UPDATE stacks SET state = 'settling' WHERE stack_small_id = ?", (sid,))
                out.append(state)
        return out

    def finish_settlement(self, stack_small_id: int, settlement: dict) -> None:
        self.finish_settlements({stack_small_id: settlement})

    def finish_settlements(self, settlements: dict[int, dict]) -> None:
        """Mark stacks settled with their settlement records, in one transaction."""
        with self._tx() as c:
            c.executemany(
                "UPDATE stacks SET state = 'settled', settlement = ? WHERE stack_small_id = ?",
                [(json.dumps(doc), sid) for sid, doc in settlements.items()],
            )

    def abort_settlement(self, stack_small_id: int) -> None:
        """The chain refused the settlement: take requests again."""
        self.abort_settlements([stack_small_id])

    def abort_settlements(self, stack_small_ids: Sequence[int]) -> None:
        """Reopen stacks whose settlement the chain refused. In the same transaction, the ``stack_in_settlement``
        refusals recorded for them are dropped: they stopped being true, and a re-sent request id is judged anew
        (served once) instead of being answered with a refusal of a stack that takes requests again."""
        with self._tx() as c:
            for sid in stack_small_ids:
                reopened = c.execute(
                    "UPDATE stacks SET state = 'open' WHERE stack_small_id = ? AND state = 'settling'", (sid,)
                ).rowcount
                if reopened:
                    c.execute(
                        "DELETE FROM refusals WHERE stack_small_id = ? AND type = ?", (sid, StackSettling.type)
                    )

    def note_claimed_many(self, digests: dict[int, str]) -> None:
        """Remember that stacks were claimed (in their settlement records), so settlement runs skip them."""
        with self._tx() as c:
            for sid, digest in digests.items():
                row = c.execute("SELECT settlement FROM stacks WHERE stack_small_id = ?", (sid,)).fetchone()
                if row is None:
                    continue
                doc = json.loads(row[0]) if row[0] else {}
                doc["claimed_digest"] = digest
                c.execute("UPDATE stacks SET settlement = ? WHERE stack_small_id = ?", (json.dumps(doc), sid))

    # ------------------------------------------------------------------ reads
    def facts(self, stack_small_id: int) -> StackFacts | None:
        """The chain facts recorded with a stack this node served (its owner among them), or None."""
        with self._lock:
            row = self.conn.execute(
                "SELECT stack_small_id, num_compute_units, selected_node_id, task_small_id, owner, "
                "price_per_one_million_compute_units FROM stacks WHERE stack_small_id = ?",
                (stack_small_id,),
            ).fetchone()
        return None if row is None else StackFacts(*row)

    def usage(self, stack_small_id: int) -> StackUsage | None:
        with self._lock:
            row = self.conn.execute(
                "SELECT stack_small_id, num_compute_units, used_units, reserved_units, num_requests, "
                "(SELECT COUNT(*) FROM reservations r WHERE r.stack_small_id = s.stack_small_id), overrun_units, state, "
                "selected_node_id, task_small_id, settlement FROM stacks s WHERE stack_small_id = ?",
                (stack_small_id,),
            ).fetchone()
        return None if row is None else _usage(row)

    def stacks(self) -> list[StackUsage]:
        with self._lock:
            rows = self.conn.execute(
                "SELECT stack_small_id, num_compute_units, used_units, reserved_units, num_requests, "
                "(SELECT COUNT(*) FROM reservations r WHERE r.stack_small_id = s.stack_small_id), overrun_units, state, "
                "selected_node_id, task_small_id, settlement FROM stacks s ORDER BY stack_small_id"
            ).fetchall()
        return [_usage(r) for r in rows]

    def last_served_ms(self) -> dict[int, int]:
        """When each stack last had a request served (ms since the epoch)."""
        with self._lock:
            rows = self.conn.execute("SELECT stack_small_id, MAX(served_at_ms) FROM history GROUP BY stack_small_id").fetchall()
        return {int(s): int(t) for s, t in rows}

    def history(self, stack_small_id: int) -> StackHistory:
        """The stack's history in serving order (empty if never served here)."""
        with self._lock:
            rows = self.conn.execute(
                f"SELECT {ENTRY_COLUMNS} FROM history WHERE stack_small_id = ? ORDER BY idx", (stack_small_id,)
            ).fetchall()
            stack = self.conn.execute(
                "SELECT task_small_id, selected_node_id FROM stacks WHERE stack_small_id = ?", (stack_small_id,)
            ).fetchone()
        entries = [_entry(r) for r in rows]
        model = entries[0].response.get("model") if entries else None
        return StackHistory(
            stack_small_id,
            entries,
            node_small_id=stack[1] if stack else None,
            task_small_id=stack[0] if stack else None,
            model=model,
        )


HISTORY_COLUMNS = (
    "stack_small_id, idx, request, response, units, usage_units, reserved_units, payload_hash, response_hash, leaf, "
    "served_at_ms, request_id, seed, arrived_ms, first_token_ms"
)
HISTORY_ARITY = 15
ENTRY_COLUMNS = (
    "idx, request, response, units, usage_units, reserved_units, payload_hash, response_hash, leaf, served_at_ms, "
    "request_id, seed, arrived_ms, first_token_ms"
)


def _entry(r) -> HistoryEntry:
    return HistoryEntry(
        index=r[0],
        request=json.loads(r[1]),
        response=json.loads(r[2]),
        units=r[3],
        usage_units=r[4],
        reserved_units=r[5],
        payload_hash=bytes(r[6]),
        response_hash=bytes(r[7]),
        leaf=bytes(r[8]),
        served_at_ms=r[9],
        request_id=r[10],
        seed=r[11],
        arrived_ms=r[12],
        first_token_ms=r[13],
    )


def _usage(row) -> StackUsage:
    return StackUsage(
        stack_small_id=row[0],
        num_compute_units=row[1],
        used_units=row[2],
        reserved_units=row[3],
        num_requests=row[4],
        in_flight=row[5],
        overrun_units=row[6],
        state=row[7],
        selected_node_id=row[8],
        task_small_id=row[9],
        settlement=orjson.loads(row[10]) if row[10] else None,
    )


def insufficient(
    stack_small_id: int, num: int, used: int, reserved: int, estimate: int, *, retry_after_s: int | None = None
) -> InsufficientUnits:
    """The 425 refusal; ``retry_after_s`` (sent as ``Retry-After``): when units are short only because of other
    holders' reservations, the seconds until the earliest of their leases expires."""
    left = num - used - reserved
    in_flight = f", {reserved} reserved by requests in flight" if reserved else ""
    fields = {"stack_small_id": stack_small_id, "units_left": left, "estimate": estimate}
    if reserved:
        fields["reserved_in_flight"] = reserved  # units that come back when those requests end: not final
    if retry_after_s is not None:
        fields["retry_after_s"] = retry_after_s
    return InsufficientUnits(
        f"stack {stack_small_id} cannot cover this request: {left} compute units left of {num} ({used} used"
        f"{in_flight}); the request's estimate is {estimate} (nothing charged)",
        **fields,
    )
