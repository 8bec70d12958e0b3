"""The effects the loopback Sui node reports for a transaction: ``ExecutedTransaction`` messages (status with
Move abort locations, changed objects, the gas object, events, USDC balance changes) built from localnet results.
See :mod:`atoma_ops.testing.sui.execute` for the rules.
"""

from __future__ import annotations

import base64
import hashlib

import base58
import pysui.sui.sui_grpc.suimsgs.google.protobuf as pb
import pysui.sui.sui_grpc.suimsgs.sui.rpc.v2 as sui

from atoma_ops.chain._json import loads
from atoma_ops.chain.errors import (
    ChainError,
    abort_from_json,
)
from atoma_ops.chain.localnet.engine import SHARED, Localnet
from atoma_ops.chain.types import ObjectChange, TxResult
from atoma_ops.wallet import normalize_address

from .objects import (
    ATOMA_DB_INITIAL_SHARED_VERSION,
    GAS_COIN_TYPE,
    gas_coin_id,
    object_digest,
    sent_count,
    utc,
)
from .txdecode import decode_transaction

#: The gas summary every execution and simulation reports (MIST); nothing is charged.
COMPUTATION_COST = 1_000_000
STORAGE_COST = 2_000_000
STORAGE_REBATE = 0
#: Where the framework modules the contract can abort in live.
FRAMEWORK_PACKAGES = {"balance": "0x2", "coin": "0x2", "dynamic_field": "0x2", "option": "0x1", "vector": "0x1"}
_Kind = sui.ExecutionErrorExecutionErrorKind
_Op = sui.ChangedObjectIdOperation
_In = sui.ChangedObjectInputObjectState
_Out = sui.ChangedObjectOutputObjectState


def _hash(tag: bytes, *parts: str) -> str:
    return base58.b58encode(hashlib.blake2b(tag + "|".join(parts).encode(), digest_size=32).digest()).decode()


# --------------------------------------------------------------------------------------------------- messages
def _owner(owner: str) -> sui.Owner | None:
    if owner == SHARED:
        return sui.Owner(kind=sui.OwnerOwnerKind.SHARED, version=ATOMA_DB_INITIAL_SHARED_VERSION)
    if owner == "immutable":
        return sui.Owner(kind=sui.OwnerOwnerKind.IMMUTABLE)
    if owner.startswith("0x"):
        return sui.Owner(kind=sui.OwnerOwnerKind.ADDRESS, address=owner)
    return None  # wrapped


def _changed_object(change: ObjectChange) -> sui.ChangedObject:
    out = sui.ChangedObject(object_id=change.object_id, object_type=change.type)
    if change.change == "deleted":
        out.input_state, out.output_state, out.id_operation = _In.EXISTS, _Out.DOES_NOT_EXIST, _Op.DELETED
        out.input_owner = _owner(change.owner)  # who held it before, as Sui reports for a deleted object
        return out
    out.input_state = _In.DOES_NOT_EXIST if change.change == "created" else _In.EXISTS
    out.id_operation = _Op.CREATED if change.change == "created" else _Op.NONE
    out.output_state = _Out.OBJECT_WRITE
    out.output_version = change.version
    out.output_digest = object_digest(change.object_id, change.version)
    out.output_owner = _owner(change.owner)
    return out


def _gas_object(sender: str, input_version: int) -> sui.ChangedObject:
    object_id, output_version = gas_coin_id(sender), input_version + 1
    owner = sui.Owner(kind=sui.OwnerOwnerKind.ADDRESS, address=sender)
    return sui.ChangedObject(
        object_id=object_id, object_type=GAS_COIN_TYPE,
        input_state=_In.EXISTS, input_version=input_version,
        input_digest=object_digest(object_id, input_version), input_owner=owner,
        output_state=_Out.OBJECT_WRITE, output_version=output_version,
        output_digest=object_digest(object_id, output_version), output_owner=owner,
        id_operation=_Op.NONE,
    )


def _status(error: dict | None, package_id: str, command: int | None, function: str | None) -> sui.ExecutionStatus:
    if error is None:
        return sui.ExecutionStatus(success=True)
    kind = error.get("kind")
    description = str(abort_from_json(error))
    out = sui.ExecutionError(description=description, command=command)
    if kind == "MoveAbort":
        module = error.get("module", "")
        if module == "db":
            location = sui.MoveLocation(package=package_id, module=module,
                                        function_name=error.get("function") or function)
        else:
            package = normalize_address(FRAMEWORK_PACKAGES.get(module, "0x2"))
            location = sui.MoveLocation(package=package, module=module)
        out.kind = _Kind.MOVE_ABORT
        out.abort = sui.MoveAbort(abort_code=int(error["code"]), location=location)
    elif kind == "ArithmeticError":
        out.kind = _Kind.MOVE_PRIMITIVE_RUNTIME_ERROR
        out.description = f"ARITHMETIC_ERROR: {error.get('message', '')}"
        out.abort = sui.MoveAbort(location=sui.MoveLocation(package=package_id, module="db", function_name=function))
    elif kind == "ExecutionError":
        out.kind = _Kind.OBJECT_TOO_BIG
    else:
        out.kind = _Kind.EXECUTION_ERROR_KIND_UNKNOWN
    return sui.ExecutionStatus(success=False, error=out)


def _call_site(tx_bytes: bytes) -> tuple[int | None, str | None]:
    """(index, function) of a transaction's last MoveCall: BCS, or the localnet's own JSON transactions."""
    try:
        if tx_bytes[:1] == b"{":
            commands = loads(tx_bytes).get("commands") or []
            calls = [(i, c.get("function")) for i, c in enumerate(commands) if c.get("kind") == "MoveCall"]
        else:
            commands = decode_transaction(tx_bytes).commands
            calls = [(i, c.function) for i, c in enumerate(commands) if hasattr(c, "function")]
    except (ChainError, ValueError, TypeError, AttributeError):
        return None, None
    return calls[-1] if calls else (None, None)


def event_message(
    package_id: str, sender: str, type_: str, parsed_json: dict, checkpoint: int | None, digest: str, index: int,
    fields: frozenset[str] | None,
) -> sui.Event:
    def want(name: str) -> bool:
        return fields is None or name in fields

    out = sui.Event()
    if want("package_id"):
        out.package_id = package_id
    if want("module"):
        out.module = "db"
    if want("sender"):
        out.sender = sender
    if want("event_type"):
        out.event_type = type_
    if want("json"):
        out.json = pb.Value.from_dict(parsed_json)
    if want("checkpoint") and checkpoint is not None:
        out.checkpoint = checkpoint
    if want("transaction_digest"):
        out.transaction_digest = digest
    if want("transaction_index") and checkpoint is not None:
        out.transaction_index = 0  # one transaction per checkpoint
    if want("event_index"):
        out.event_index = index
    return out


def executed(
    net: Localnet, result: TxResult, *, fields: frozenset[str] | None, gas_input_version: int,
    checkpoint: int | None = None, tx_bytes: bytes | None = None, signatures: list[str] | None = None,
) -> sui.ExecutedTransaction:
    """An ``ExecutedTransaction`` for a localnet result (recorded, or simulated when ``checkpoint`` is None)."""

    def want(name: str) -> bool:
        return fields is None or name in fields

    package_id = normalize_address(net.package_id)
    out = sui.ExecutedTransaction()
    if want("digest"):
        out.digest = result.digest
    if want("transaction"):
        tx = sui.Transaction(digest=result.digest, sender=result.sender)
        if tx_bytes and tx_bytes[:1] != b"{":  # the localnet's own transactions are canonical JSON, not BCS
            tx.bcs = sui.Bcs(name="TransactionData", value=bytes(tx_bytes))
        out.transaction = tx
    if want("signatures") and signatures:
        out.signatures = [
            sui.UserSignature(bcs=sui.Bcs(name="UserSignature", value=base64.b64decode(s))) for s in signatures
        ]
    if want("effects"):
        command, function = (None, None)
        if not result.ok and tx_bytes:
            command, function = _call_site(bytes(tx_bytes))
        gas = _gas_object(result.sender, gas_input_version)
        changed = sorted([_changed_object(c) for c in result.object_changes] + [gas], key=lambda c: c.object_id)
        events_digest = _hash(b"TransactionEvents::", result.digest) if result.events else None
        out.effects = sui.TransactionEffects(
            digest=_hash(b"TransactionEffects::", result.digest, result.status),
            version=2,
            status=_status(result.error, package_id, command, function),
            epoch=result.epoch,
            gas_used=sui.GasCostSummary(
                computation_cost=COMPUTATION_COST, storage_cost=STORAGE_COST,
                storage_rebate=STORAGE_REBATE, non_refundable_storage_fee=0,
            ),
            transaction_digest=result.digest,
            gas_object=gas,
            events_digest=events_digest,
            lamport_version=max((c.output_version or 0) for c in changed),
            changed_objects=changed,
        )
    if want("events"):
        out.events = sui.TransactionEvents(
            digest=_hash(b"TransactionEvents::", result.digest) if result.events else None,
            events=[
                event_message(package_id, e.sender, e.type, e.parsed_json, checkpoint, e.id.tx_digest,
                               e.id.event_seq, None)
                for e in result.events
            ],
        )
    if want("checkpoint") and checkpoint is not None:
        out.checkpoint = checkpoint
    if want("timestamp") and checkpoint is not None:
        out.timestamp = utc(result.timestamp_ms)
    if want("balance_changes"):
        out.balance_changes = [
            sui.BalanceChange(address=address, coin_type=net.usdc_type, amount=str(delta))
            for address, delta in result.balance_changes.items()
        ]
    if want("transaction_index") and checkpoint is not None:
        out.transaction_index = 0
    return out


def recorded_transaction(net: Localnet, digest: str, fields: frozenset[str] | None) -> sui.ExecutedTransaction | None:
    """The ``ExecutedTransaction`` of a transaction the localnet has recorded, or None for an unknown digest."""
    row = net.conn.execute(
        "SELECT seq, sender, tx_bytes, signatures FROM transactions WHERE digest = ?", (digest,)
    ).fetchone()
    if row is None:
        return None
    seq, sender, tx_bytes, signatures = row
    result = net.get_transaction(digest)
    assert result is not None
    return executed(
        net, result, fields=fields, gas_input_version=1 + sent_count(net.conn, sender, before_seq=seq),
        checkpoint=int(seq), tx_bytes=bytes(tx_bytes), signatures=loads(signatures),
    )
