"""The localnet engine: Sui-like objects, signed transactions and epochs around the ``atoma::db`` logic.

Persistence is one SQLite file in WAL mode. Every transaction is one ``BEGIN IMMEDIATE … COMMIT``: a failure rolls
back everything it did, and several processes can submit at once without a lost update.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import sqlite3
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Callable

from ..._sqlite import connect_wal, immediate
from ...protocol import abi
from ...protocol.commitments import canonical_json
from ...protocol.epochs import MAX_EPOCH_DURATION_MS, MAX_SEED, check_epoch_advance
from ...protocol.constants import (
    INITIAL_COLLATERAL_REQUIRED_FOR_REGISTRATION,
    INITIAL_CROSS_VALIDATION_EXTRA_NODES_CHARGE_PERMILLE,
    INITIAL_CROSS_VALIDATION_EXTRA_NODES_COUNT,
    INITIAL_CROSS_VALIDATION_PROBABILITY_PERMILLE,
    INITIAL_PERMILLE_FOR_HONEST_NODES_ON_DISPUTE,
    INITIAL_PERMILLE_FOR_ORACLE_ON_DISPUTE,
    INITIAL_PERMILLE_TO_SLASH_NODE_ON_TIMEOUT,
    INITIAL_SAMPLING_CONSENSUS_CHARGE_PERMILLE,
    U64_MAX,
)
from ...wallet import InvalidSignatureError, normalize_address, verify_signature
from .. import codec
from .._json import dumps, loads
from ..digests import transaction_digest
from ..errors import ChainError, ExecutionFailure, InvalidArgument, MoveAbort, MoveArithmeticError, NotFound, TransactionRejected, abort_from_json
from ..types import (
    ChainEvent,
    EventId,
    ObjectChange,
    TxResult,
)
from .contract import AtomaDb
from .ctx import Ctx, now_ms
from .reads import LocalnetReads

CHAIN_FILE = "chain.sqlite"
WAL_AUTOCHECKPOINT_PAGES = 10_000
SHARED = "shared"

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS objects (
    id TEXT PRIMARY KEY, type TEXT NOT NULL, owner TEXT NOT NULL, version INTEGER NOT NULL, data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS objects_by_owner ON objects (owner, type);
CREATE TABLE IF NOT EXISTS kv (tbl TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL, PRIMARY KEY (tbl, key))
    WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS transactions (
    seq INTEGER PRIMARY KEY, digest TEXT NOT NULL UNIQUE, sender TEXT NOT NULL,
    tx_bytes BLOB NOT NULL, signatures TEXT NOT NULL, status TEXT NOT NULL, effects TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY, tx_digest TEXT NOT NULL, event_seq INTEGER NOT NULL,
    name TEXT NOT NULL, type TEXT NOT NULL, sender TEXT NOT NULL, parsed_json TEXT NOT NULL,
    timestamp_ms INTEGER NOT NULL, epoch INTEGER NOT NULL, UNIQUE (tx_digest, event_seq)
);
"""


def check_signature(tx_bytes: bytes, signatures: list[str], sender: str) -> None:
    """One signature, valid over ``tx_bytes``, by ``sender``'s key; else :class:`TransactionRejected`."""
    if len(signatures) != 1:
        raise TransactionRejected(f"expected exactly one signature (the sender's), got {len(signatures)}")
    try:
        signer = verify_signature(tx_bytes, signatures[0])
    except InvalidSignatureError as exc:
        raise TransactionRejected(f"invalid signature: {exc}") from None
    if signer != sender:
        raise TransactionRejected(f"signed by {signer}, but the transaction's sender is {sender}")


class Localnet(LocalnetReads):
    """One localnet home's chain file. Synchronous; the async Chain adapter wraps it.

    Args:
        path: the SQLite file (``<home>/chain.sqlite``).
        rng: optional callable returning u64 draws, replacing the persisted seeded stream (tests).
        busy_timeout_s: how long a writer waits for another process's transaction.
    """

    def __init__(self, path: str | os.PathLike, *, rng: Callable[[], int] | None = None, busy_timeout_s: float = 60.0):
        self.path = Path(path)
        if not self.path.exists():
            raise NotFound(f"no localnet at {self.path}: run `atoma-ops localnet init` first")
        self.rng = rng
        self.conn = self._connect(self.path, busy_timeout_s)
        try:
            info = loads(self._meta(self.conn, "package"))
        except (TypeError, sqlite3.DatabaseError):
            raise NotFound(f"{self.path} is not an initialised localnet") from None
        self.chain_id: str = info["chain_id"]
        self.package_id: str = info["package_id"]
        self.usdc_package_id: str = info["usdc_package_id"]
        self.db_id: str = info["db_id"]
        self.coin_type = f"0x2::coin::Coin<{self.usdc_package_id}::usdc::USDC>"
        self.usdc_type = f"{self.usdc_package_id}::usdc::USDC"

    # ------------------------------------------------------------------ setup
    @staticmethod
    def _connect(path: Path, busy_timeout_s: float) -> sqlite3.Connection:
        conn = connect_wal(path, busy_timeout_s)
        # A transaction writes several pages; checkpoint less often than SQLite's 1000-page default.
        conn.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")
        return conn

    @classmethod
    def publish(
        cls,
        path: str | os.PathLike,
        publisher: str,
        *,
        seed: int = 0,
        epoch_duration_ms: int = 0,
        force: bool = False,
    ) -> "Localnet":
        """Create the chain file and publish the package: AtomaDb shared, AtomaManagerBadge to ``publisher``."""
        path = Path(path)
        if path.exists():
            if not force:
                raise InvalidArgument(f"a localnet already exists at {path} (use --force to replace it)")
            for suffix in ("", "-wal", "-shm"):
                Path(str(path) + suffix).unlink(missing_ok=True)
        if not 0 <= seed <= MAX_SEED or not 0 <= epoch_duration_ms <= MAX_EPOCH_DURATION_MS:
            raise InvalidArgument(f"seed must be between 0 and {MAX_SEED}, epoch duration between 0 and {MAX_EPOCH_DURATION_MS} ms")
        publisher = normalize_address(publisher)
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = cls._connect(path, 60.0)
        conn.executescript(SCHEMA)
        chain_id = secrets.token_hex(4)
        publish_bytes = canonical_json({"chain": chain_id, "kind": "Publish", "sender": publisher})
        digest = transaction_digest(publish_bytes)

        def oid(i: int) -> str:
            return "0x" + hashlib.blake2b(digest.encode() + i.to_bytes(8, "little"), digest_size=32).hexdigest()

        package_id, usdc_package_id, db_id, badge_id = oid(1), oid(2), oid(3), oid(4)
        ts = now_ms()
        db_fields = {
            "next_node_small_id": 1,
            "next_task_small_id": 1,
            "next_stack_small_id": 1,
            "fee_treasury": 0,
            "communal_treasury": 0,
            "cross_validation_probability_permille": INITIAL_CROSS_VALIDATION_PROBABILITY_PERMILLE,
            "cross_validation_extra_nodes_count": INITIAL_CROSS_VALIDATION_EXTRA_NODES_COUNT,
            "sampling_consensus_charge_permille": INITIAL_SAMPLING_CONSENSUS_CHARGE_PERMILLE,
            "cross_validation_extra_nodes_charge_permille": INITIAL_CROSS_VALIDATION_EXTRA_NODES_CHARGE_PERMILLE,
            "key_rotation_counter": 0,
            "nonce": 0,
            "is_registration_disabled": False,
            "registration_collateral_in_protocol_token": INITIAL_COLLATERAL_REQUIRED_FOR_REGISTRATION,
            "permille_to_slash_node_on_timeout": INITIAL_PERMILLE_TO_SLASH_NODE_ON_TIMEOUT,
            "permille_for_oracle_on_dispute": INITIAL_PERMILLE_FOR_ORACLE_ON_DISPUTE,
            "permille_for_honest_nodes_on_dispute": INITIAL_PERMILLE_FOR_HONEST_NODES_ON_DISPUTE,
        }
        meta = {
            "package": dumps(
                {"chain_id": chain_id, "package_id": package_id, "usdc_package_id": usdc_package_id, "db_id": db_id}
            ),
            "clock": dumps({"epoch": 0, "epoch_start_ms": ts, "epoch_duration_ms": epoch_duration_ms}),
            "rng": dumps({"seed": str(seed), "counter": 0}),
            "usdc_minted": "0",
        }
        effects = {
            "status": "success",
            "epoch": 0,
            "timestamp_ms": ts,
            "object_changes": [
                {"object_id": db_id, "type": f"{package_id}::db::AtomaDb", "owner": SHARED, "version": 1, "change": "created"},
                {"object_id": badge_id, "type": f"{package_id}::db::AtomaManagerBadge", "owner": publisher, "version": 1, "change": "created"},
            ],
            "balance_changes": {},
        }
        with immediate(conn):
            conn.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", list(meta.items()))
            conn.execute(
                "INSERT INTO objects (id, type, owner, version, data) VALUES (?, ?, ?, 1, ?)",
                (db_id, f"{package_id}::db::AtomaDb", SHARED, dumps(db_fields)),
            )
            conn.execute(
                "INSERT INTO objects (id, type, owner, version, data) VALUES (?, ?, ?, 1, '{}')",
                (badge_id, f"{package_id}::db::AtomaManagerBadge", publisher),
            )
            conn.execute(
                "INSERT INTO transactions (digest, sender, tx_bytes, signatures, status, effects) VALUES (?, ?, ?, '[]', 'success', ?)",
                (digest, publisher, publish_bytes, dumps(effects)),
            )
            conn.execute(
                "INSERT INTO events (tx_digest, event_seq, name, type, sender, parsed_json, timestamp_ms, epoch) VALUES (?, 0, ?, ?, ?, ?, ?, 0)",
                (digest, "PublishedEvent", f"{package_id}::db::PublishedEvent", publisher,
                 dumps({"db": db_id, "manager_badge": badge_id}), ts),
            )
        conn.close()
        return cls(path)

    def close(self) -> None:
        self.conn.close()

    def type_of(self, kind: str) -> str:
        if kind == "Coin":
            return self.coin_type
        return f"{self.package_id}::db::{kind}"

    # ------------------------------------------------------------------ low level
    @staticmethod
    def _meta(conn: sqlite3.Connection, key: str) -> str | None:
        row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    @staticmethod
    def _set_meta(conn: sqlite3.Connection, key: str, value: str) -> None:
        conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    @staticmethod
    def _object(conn: sqlite3.Connection, object_id: str) -> dict | None:
        row = conn.execute("SELECT id, type, owner, version, data FROM objects WHERE id = ?", (object_id,)).fetchone()
        if row is None:
            return None
        return {"id": row[0], "type": row[1], "owner": row[2], "version": row[3], "data": loads(row[4])}

    def _write(self) -> "AbstractContextManager[sqlite3.Connection]":
        return immediate(self.conn)

    def _tick(self, conn: sqlite3.Connection) -> dict:
        """Advance the epoch by wall clock when a duration is configured; returns the clock."""
        clock = loads(self._meta(conn, "clock"))
        duration = clock["epoch_duration_ms"]
        if duration > 0:
            elapsed = now_ms() - clock["epoch_start_ms"]
            if elapsed >= duration:
                n = elapsed // duration
                clock["epoch"] += n
                clock["epoch_start_ms"] += n * duration
                self._set_meta(conn, "clock", dumps(clock))
        return clock

    # ------------------------------------------------------------------ epochs, rng, faucet
    def current_epoch(self) -> int:
        clock = loads(self._meta(self.conn, "clock"))
        if clock["epoch_duration_ms"] > 0:
            return clock["epoch"] + max(0, now_ms() - clock["epoch_start_ms"]) // clock["epoch_duration_ms"]
        return clock["epoch"]

    def clock(self) -> dict:
        clock = loads(self._meta(self.conn, "clock"))
        clock["current_epoch"] = self.current_epoch()
        return clock

    def advance_epoch(self, count: int = 1) -> int:
        if count < 1:
            raise InvalidArgument("count must be >= 1")
        with self._write() as conn:
            clock = self._tick(conn)
            try:
                clock["epoch"] = check_epoch_advance(clock["epoch"], count)
            except ValueError as exc:
                raise InvalidArgument(str(exc)) from None
            clock["epoch_start_ms"] = now_ms()
            self._set_meta(conn, "clock", dumps(clock))
        return clock["epoch"]

    def seed_rng(self, seed: int) -> None:
        if not 0 <= seed <= MAX_SEED:
            raise InvalidArgument(f"seed must be between 0 and {MAX_SEED}")
        with self._write() as conn:
            self._set_meta(conn, "rng", dumps({"seed": str(seed), "counter": 0}))

    def usdc_minted(self) -> int:
        return int(self._meta(self.conn, "usdc_minted"))

    def faucet_mint(self, recipient: str, amount: int) -> TxResult:
        """Mint ``amount`` USDC base units from the localnet's treasury into a new coin for ``recipient``."""
        recipient = normalize_address(recipient)
        amount = codec.check_value("amount", abi.U64, amount)
        if amount == 0:
            raise InvalidArgument("amount must be > 0")
        tx_bytes = canonical_json(
            {"chain": self.chain_id, "kind": "FaucetMint", "recipient": recipient, "amount": str(amount), "nonce": secrets.token_hex(16)}
        )
        digest = transaction_digest(tx_bytes)
        with self._write() as conn:
            minted = int(self._meta(conn, "usdc_minted")) + amount
            if minted > U64_MAX:
                raise InvalidArgument(f"minting {amount} would overflow the USDC supply (u64)")
            clock = self._tick(conn)
            ctx = Ctx(self, conn, recipient, digest, clock)
            ctx.create_coin(recipient, amount)
            self._set_meta(conn, "usdc_minted", str(minted))
            result = self._finish(ctx, tx_bytes, [], bump_db=False)
        return result

    # ------------------------------------------------------------------ transactions
    def build_transaction(self, sender: str, commands: list[dict]) -> bytes:
        """Canonical transaction bytes; the nonce makes two otherwise equal calls distinct transactions."""
        return canonical_json(
            {"chain": self.chain_id, "sender": normalize_address(sender), "nonce": secrets.token_hex(16), "commands": commands}
        )

    def execute(self, tx_bytes: bytes, signatures: list[str]) -> TxResult:
        """Verify and execute signed transaction bytes; identical bytes return the first effects.

        Raises:
            TransactionRejected: malformed bytes, another chain, bad signature, wrong sender, an object the sender
                does not own or of the wrong type. Nothing is recorded.
            MoveAbort / MoveArithmeticError: execution failed; nothing changed, the failure is recorded under the
                digest.
        """
        digest = transaction_digest(tx_bytes)
        # Signature first, as a Sui validator does: known bytes with a forged signature are refused too.
        tx = self._parse(tx_bytes)
        check_signature(tx_bytes, signatures, tx["sender"])
        return self._execute_checked(digest, tx, tx_bytes, signatures)

    def execute_verified(
        self, digest: str, sender: str, commands: list[dict], tx_bytes: bytes, signatures: list[str]
    ) -> TxResult:
        """Execute commands of a transaction whose bytes and signature the caller has already verified in another
        format (the loopback Sui node: BCS ``TransactionData`` under Sui's digest). Same guarantees as
        :meth:`execute`: a known digest returns its first effects; a failure is recorded under the digest."""
        try:
            sender = normalize_address(sender)
        except ValueError:
            raise TransactionRejected(f"{sender!r} is not an address") from None
        return self._execute_checked(digest, {"sender": sender, "commands": commands}, tx_bytes, signatures)

    def _execute_checked(self, digest: str, tx: dict, tx_bytes: bytes, signatures: list[str]) -> TxResult:
        with self._write() as conn:
            known = self._load_transaction(conn, digest)
            if known is None:
                clock = self._tick(conn)
                ctx = Ctx(self, conn, tx["sender"], digest, clock)
                # The failure is recorded in the same write transaction as the rolled-back attempt, so no other
                # process can execute these bytes in between and contradict what this caller is told.
                conn.execute("SAVEPOINT attempt")
                try:
                    self._run(ctx, tx["commands"])
                except (MoveAbort, MoveArithmeticError, ExecutionFailure) as exc:
                    conn.execute("ROLLBACK TO attempt")
                    conn.execute("RELEASE attempt")
                    known = self._record_failure(conn, digest, tx, tx_bytes, signatures, exc, clock)
                except BaseException:
                    conn.execute("ROLLBACK TO attempt")
                    conn.execute("RELEASE attempt")
                    raise
                else:
                    conn.execute("RELEASE attempt")
                    return self._finish(ctx, tx_bytes, signatures)
        return self._replay(known)

    def simulate(self, sender: str, commands: list[dict], *, digest: str | None = None) -> TxResult:
        """Run ``commands`` as ``sender`` and report what executing them would do, keeping nothing.

        Everything (the clock tick, the contract's writes, the transaction and event records) happens inside a
        savepoint that is always rolled back. A Move abort or arithmetic error is *returned* as a ``failure``
        result, as :meth:`get_transaction` would later report it; no signature is checked. ``digest`` seeds the
        ids of created objects (pass the transaction's digest to see the ids execution would create).

        Raises:
            TransactionRejected: what :meth:`execute_verified` refuses before execution, and a digest that is
                already recorded.
        """
        try:
            sender = normalize_address(sender)
        except ValueError:
            raise TransactionRejected(f"{sender!r} is not an address") from None
        digest = digest or "simulation-" + secrets.token_hex(16)
        tx = {"sender": sender, "commands": commands}
        with self._write() as conn:
            if self._load_transaction(conn, digest) is not None:
                raise TransactionRejected(f"transaction {digest} has already been executed")
            conn.execute("SAVEPOINT simulate")
            try:
                clock = self._tick(conn)
                ctx = Ctx(self, conn, sender, digest, clock)
                conn.execute("SAVEPOINT attempt")
                try:
                    self._run(ctx, commands)
                except (MoveAbort, MoveArithmeticError, ExecutionFailure) as exc:
                    conn.execute("ROLLBACK TO attempt")
                    return self._record_failure(conn, digest, tx, b"", [], exc, clock)
                return self._finish(ctx, b"", [])
            finally:
                conn.execute("ROLLBACK TO simulate")
                conn.execute("RELEASE simulate")

    def _replay(self, result: TxResult) -> TxResult:
        if result.status != "success":
            error = abort_from_json(result.error or {})
            error.digest = result.digest
            raise error
        return result

    def _parse(self, tx_bytes: bytes) -> dict:
        try:
            tx = loads(tx_bytes)
            if not isinstance(tx, dict) or not isinstance(tx.get("commands"), list):
                raise ValueError
            sender = normalize_address(tx["sender"])
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            raise TransactionRejected("malformed transaction bytes") from None
        if tx.get("chain") != self.chain_id:
            raise TransactionRejected(
                f"transaction is for chain {tx.get('chain')!r}, this localnet is {self.chain_id!r}"
            )
        tx["sender"] = sender
        return tx


    def _owned_input(self, ctx: Ctx, object_id: Any, expected_type: str | None) -> dict:
        try:
            object_id = normalize_address(object_id)
        except (ValueError, TypeError, AttributeError):
            raise TransactionRejected(f"{object_id!r} is not an object id") from None
        if object_id in ctx.inputs:
            obj = ctx.inputs[object_id]
        else:
            obj = self._object(ctx.conn, object_id)
            if obj is None:
                raise TransactionRejected(f"object {object_id} does not exist")
            if obj["owner"] != ctx.sender:
                raise TransactionRejected(
                    f"object {object_id} is owned by {obj['owner']}, not by the sender {ctx.sender}"
                )
            ctx.inputs[object_id] = obj
        if expected_type is not None and obj["type"] != expected_type:
            raise TransactionRejected(f"type mismatch: object {object_id} is {obj['type']}, expected {expected_type}")
        return obj

    def _run(self, ctx: Ctx, commands: list[dict]) -> None:
        contract = AtomaDb(ctx)
        for command in commands:
            kind = command.get("kind") if isinstance(command, dict) else None
            if kind == "MoveCall":
                self._move_call(ctx, contract, command)
            elif kind == "MergeCoins":
                dest = self._owned_input(ctx, command.get("destination"), self.coin_type)
                sources = command.get("sources")
                if not isinstance(sources, list):
                    raise TransactionRejected("MergeCoins.sources must be a list")
                for source_id in sources:
                    src = self._owned_input(ctx, source_id, self.coin_type)
                    if src["id"] == dest["id"]:
                        raise TransactionRejected("cannot merge a coin into itself")
                    amount = ctx.coin_balance(src)
                    ctx.set_coin_balance(src, 0)
                    ctx.delete_object(src["id"])
                    ctx.set_coin_balance(dest, ctx.coin_balance(dest) + amount)
            elif kind == "SplitCoins":
                coin = self._owned_input(ctx, command.get("coin"), self.coin_type)
                amounts = [codec.check_value("amounts", abi.U64, a) for a in command.get("amounts", [])]
                for amount in amounts:
                    if amount > ctx.coin_balance(coin):
                        raise MoveAbort("balance", 2, "ENotEnough")
                    ctx.set_coin_balance(coin, ctx.coin_balance(coin) - amount)
                    ctx.create_coin(ctx.sender, amount)
            elif kind == "TransferObjects":
                recipient = normalize_address(command.get("recipient", ""))
                for object_id in command.get("objects", []):
                    obj = self._owned_input(ctx, object_id, None)
                    if obj["type"] == self.coin_type:
                        bal = ctx.coin_balance(obj)
                        ctx.balance_changes[obj["owner"]] = ctx.balance_changes.get(obj["owner"], 0) - bal
                        ctx.balance_changes[recipient] = ctx.balance_changes.get(recipient, 0) + bal
                    obj["owner"] = recipient
            else:
                raise TransactionRejected(f"unsupported command {kind!r}")

    def _move_call(self, ctx: Ctx, contract: AtomaDb, command: dict) -> None:
        if command.get("package") != self.package_id or command.get("module") != "db":
            raise TransactionRejected(f"unknown package or module {command.get('package')}::{command.get('module')}")
        function = command.get("function")
        params = abi.ENTRY_FUNCTIONS.get(function)
        if params is None:
            raise TransactionRejected(f"db::{function} is not an entry function")
        arguments = command.get("arguments")
        if not isinstance(arguments, list) or len(arguments) != len(params) + 1:
            raise TransactionRejected(f"db::{function} takes {len(params) + 1} arguments")
        if arguments[0] != self.db_id:
            raise TransactionRejected(f"first argument must be the AtomaDb {self.db_id}")
        values: dict[str, Any] = {}
        for param, arg in zip(params, arguments[1:]):
            if param.type == abi.RANDOM:
                if arg != abi.RANDOM_OBJECT_ID:
                    raise TransactionRejected(f"{param.name} must be the Random object {abi.RANDOM_OBJECT_ID}")
                values[param.name] = None
            elif param.type == abi.USDC_COIN_MUT:
                values[param.name] = self._owned_input(ctx, arg, self.coin_type)
            elif param.is_object:
                obj = self._owned_input(ctx, arg, self.type_of(abi.badge_kind(param.type)))
                badge = {"id": obj["id"]}
                if "small_id" in obj["data"]:
                    badge["small_id"] = int(obj["data"]["small_id"]["inner"])
                values[param.name] = badge
            else:
                try:
                    values[param.name] = codec.from_wire(param.name, param.type, arg)
                except InvalidArgument as exc:
                    raise TransactionRejected(f"invalid argument {exc}") from None
        try:
            getattr(contract, function)(**values)
        except MoveAbort as exc:
            if exc.module == "db" and exc.function is None:
                exc.function = function
            raise

    def _finish(self, ctx: Ctx, tx_bytes: bytes, signatures: list[str], *, bump_db: bool = True) -> TxResult:
        """Write back mutated objects, AtomaDb, events and the transaction record."""
        conn = ctx.conn
        versions = [obj["version"] for obj in ctx.inputs.values()]
        if bump_db:
            versions.append(ctx.db_version)
        lamport = max(versions, default=0) + 1
        for object_id, obj in ctx.inputs.items():
            conn.execute(
                "UPDATE objects SET owner = ?, version = ?, data = ? WHERE id = ?",
                (obj["owner"], lamport, dumps(obj["data"]), object_id),
            )
            ctx.changes.setdefault(object_id, {"change": "mutated", "type": obj["type"], "owner": obj["owner"]})
            ctx.changes[object_id]["owner"] = obj["owner"]
        if bump_db:
            conn.execute("UPDATE objects SET version = ?, data = ? WHERE id = ?", (lamport, dumps(ctx.db), self.db_id))
            ctx.changes[self.db_id] = {"change": "mutated", "type": self.type_of("AtomaDb"), "owner": SHARED}
            if ctx.rng_state != ctx.rng_state_at_start:
                self._set_meta(conn, "rng", dumps(ctx.rng_state))
        conn.executemany(
            "INSERT INTO objects (id, type, owner, version, data) VALUES (?, ?, ?, ?, ?)",
            [(oid, type_, owner, lamport, data) for oid, (type_, owner, data) in ctx.created.items()],
        )
        conn.executemany(
            "INSERT INTO events (tx_digest, event_seq, name, type, sender, parsed_json, timestamp_ms, epoch) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (ctx.digest, seq, name, self.type_of(name), ctx.sender, dumps(fields), ctx.timestamp_ms, ctx.epoch)
                for seq, (name, fields) in enumerate(ctx.events)
            ],
        )
        events = [
            self._event(ctx.digest, seq, name, self.type_of(name), ctx.sender, fields, ctx.timestamp_ms, ctx.epoch)
            for seq, (name, fields) in enumerate(ctx.events)
        ]
        effects = {
            "status": "success",
            "epoch": ctx.epoch,
            "timestamp_ms": ctx.timestamp_ms,
            "object_changes": [
                {"object_id": oid, "type": c["type"], "owner": c["owner"], "version": lamport, "change": c["change"]}
                for oid, c in ctx.changes.items()
            ],
            "balance_changes": {a: v for a, v in ctx.balance_changes.items() if v != 0},
        }
        conn.execute(
            "INSERT INTO transactions (digest, sender, tx_bytes, signatures, status, effects) VALUES (?, ?, ?, ?, 'success', ?)",
            (ctx.digest, ctx.sender, tx_bytes, dumps(signatures), dumps(effects)),
        )
        return self._result(ctx.digest, ctx.sender, effects, events)

    def _record_failure(
        self, conn: sqlite3.Connection, digest: str, tx: dict, tx_bytes: bytes, signatures: list[str],
        error: ChainError, clock: dict,
    ) -> TxResult:
        detail = error.to_json()
        if isinstance(error, MoveAbort) and error.function:
            detail["function"] = error.function
        effects = {
            "status": "failure",
            "epoch": clock["epoch"],
            "timestamp_ms": now_ms(),
            "object_changes": [],
            "balance_changes": {},
            "error": detail,
        }
        if clock["epoch_duration_ms"] > 0:
            self._set_meta(conn, "clock", dumps(clock))
        conn.execute(
            "INSERT INTO transactions (digest, sender, tx_bytes, signatures, status, effects) VALUES (?, ?, ?, ?, 'failure', ?)",
            (digest, tx["sender"], tx_bytes, dumps(signatures), dumps(effects)),
        )
        return self._result(digest, tx["sender"], effects, [])

    def _event(self, digest, seq, name, type_, sender, fields, ts, epoch) -> ChainEvent:
        return ChainEvent(EventId(digest, seq), type_, name, fields, sender, self.package_id, ts, epoch)

    def _result(self, digest: str, sender: str, effects: dict, events: list[ChainEvent]) -> TxResult:
        return TxResult(
            digest=digest,
            status=effects["status"],
            sender=sender,
            epoch=effects["epoch"],
            timestamp_ms=effects["timestamp_ms"],
            events=events,
            object_changes=[ObjectChange(**c) for c in effects["object_changes"]],
            balance_changes=dict(effects["balance_changes"]),
            error=effects.get("error"),
        )

    def _load_transaction(self, conn: sqlite3.Connection, digest: str) -> TxResult | None:
        row = conn.execute("SELECT sender, effects FROM transactions WHERE digest = ?", (digest,)).fetchone()
        if row is None:
            return None
        rows = conn.execute(
            "SELECT event_seq, name, type, sender, parsed_json, timestamp_ms, epoch FROM events WHERE tx_digest = ? ORDER BY event_seq",
            (digest,),
        ).fetchall()
        events = [self._event(digest, r[0], r[1], r[2], r[3], loads(r[4]), r[5], r[6]) for r in rows]
        return self._result(digest, row[0], loads(row[1]), events)

    def get_transaction(self, digest: str) -> TxResult | None:
        """Effects of a recorded transaction (success or failure), or None when the digest is unknown."""
        return self._load_transaction(self.conn, digest)
