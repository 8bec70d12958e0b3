"""What the loopback Sui node (:mod:`atoma_ops.testing.sui.node`) says about objects: its constants, the
virtual gas coins, object digests, canonical type strings, read masks and Move function signatures.

Shared by the read side (:mod:`.reads`) and the write side (:mod:`.execute`); it imports neither.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import re
from typing import Any

import base58
import grpclib.const
import grpclib.server
import pysui.sui.sui_grpc.suimsgs.sui.rpc.v2 as sui
from grpclib.exceptions import GRPCError

from atoma_ops.chain.localnet.engine import Localnet
from atoma_ops.chain.sui.movetypes import address_bytes
from atoma_ops.protocol import abi
from atoma_ops.wallet import normalize_address

#: Reference gas price (MIST per gas unit) of every epoch.
REFERENCE_GAS_PRICE = 1000
#: Sui's limits as a full node reports them in ``Epoch.protocol_config.attributes`` (long-standing Sui mainnet
#: values). pysui reads the first ten keys at connect time into ``TransactionConstraints``;
#: ``max_move_object_size`` is the limit the localnet contract enforces. The double has no behaviour gated on
#: the protocol version, so it reports version 1.
PROTOCOL_VERSION = 1
PROTOCOL_ATTRIBUTES = {
    "max_arguments": 512,
    "max_input_objects": 2048,
    "max_num_transferred_move_object_ids": 2048,
    "max_programmable_tx_commands": 1024,
    "max_pure_argument_size": 16 * 1024,
    "max_tx_size_bytes": 128 * 1024,
    "max_type_argument_depth": 16,
    "max_type_arguments": 16,
    "max_tx_gas": 50_000_000_000,
    "max_publish_or_upgrade_per_ptb": 5,
    "max_move_object_size": 250 * 1024,
}
#: The localnet publishes AtomaDb (its only shared object) at version 1.
ATOMA_DB_INITIAL_SHARED_VERSION = 1
RANDOM_INITIAL_SHARED_VERSION = 1
RANDOM_TYPE = "0x2::random::Random"
TX_CONTEXT_TYPE = "0x2::tx_context::TxContext"
COIN_TYPE = "0x2::coin::Coin"
OPTION_TYPE = "0x1::option::Option"
ASCII_STRING_TYPE = "0x1::ascii::String"

SCAN_CHUNK = 256
PAGE_TOKEN_TAG = b"\x01"

OBJECT_FIELDS_DEFAULT = frozenset({"object_id", "version", "digest"})
OWNED_FIELDS_DEFAULT = frozenset({"object_id", "version", "object_type"})
EPOCH_FIELDS_DEFAULT = frozenset({"epoch"})
STRUCT_TAG = re.compile(r"^0x[0-9a-f]{64}::[A-Za-z_][A-Za-z0-9_]*::[A-Za-z_][A-Za-z0-9_]*$")


# --------------------------------------------------------------------------------------------------- helpers
def object_digest(object_id: str, version: int) -> str:
    """The double's object digest: base58 of blake2b-256 over ``"ObjectDigest::" ‖ id ‖ u64-LE version``."""
    raw = address_bytes(object_id)
    material = b"ObjectDigest::" + raw + int(version).to_bytes(8, "little")
    return base58.b58encode(hashlib.blake2b(material, digest_size=32).digest()).decode()


#: The virtual SUI gas coin every address holds (the localnet has no SUI and charges no gas): type, balance (MIST).
GAS_COIN_TYPE = "0x2::coin::Coin<0x2::sui::SUI>"
SUI_TYPE = "0x2::sui::SUI"
GAS_COIN_BALANCE = 10**12


def gas_coin_id(address: str) -> str:
    """The object id of ``address``'s virtual gas coin: blake2b-256 over ``b"loopback-gas" ‖ address bytes``."""
    raw = address_bytes(address)
    return "0x" + hashlib.blake2b(b"loopback-gas" + raw, digest_size=32).hexdigest()


def sent_count(conn: Any, address: str, before_seq: int | None = None) -> int:
    """Transactions ``address`` has sent on the localnet (successful or failed), optionally those before a seq."""
    if before_seq is None:
        row = conn.execute("SELECT COUNT(*) FROM transactions WHERE sender = ?", (address,)).fetchone()
    else:
        row = conn.execute(
            "SELECT COUNT(*) FROM transactions WHERE sender = ? AND seq < ?", (address, int(before_seq))
        ).fetchone()
    return int(row[0])


def gas_coin_ref(localnet: Localnet, address: str) -> tuple[str, int, str]:
    """``(object id, version, digest)`` of ``address``'s gas coin now.

    The version is 1 + the number of transactions ``address`` has sent on the localnet, successful or failed
    (the localnet records a faucet mint as sent by its recipient, so a mint bumps it too); the digest is
    :func:`object_digest` of (id, version). A refused transaction changes nothing, as on Sui.
    """
    address = normalize_address(address)
    object_id = gas_coin_id(address)
    version = 1 + sent_count(localnet.conn, address)
    return object_id, version, object_digest(object_id, version)




def mask_fields(read_mask: Any, default: frozenset[str]) -> frozenset[str] | None:
    """Top-level field names of a FieldMask; None means every field (``*``)."""
    paths = list(getattr(read_mask, "paths", None) or [])
    if not paths:
        return default
    top = {p.split(".", 1)[0] for p in paths}
    return None if "*" in top else frozenset(top)


def request_address(value: str | None, what: str) -> str:
    if not value:
        raise GRPCError(grpclib.const.Status.INVALID_ARGUMENT, f"missing {what}")
    try:
        return normalize_address(value)
    except ValueError:
        raise GRPCError(grpclib.const.Status.INVALID_ARGUMENT, f"invalid {what}: {value!r}") from None


def refuse(message: str) -> GRPCError:
    """What the node answers to a request it will not serve: ``INVALID_ARGUMENT`` with ``message``."""
    return GRPCError(grpclib.const.Status.INVALID_ARGUMENT, message)


def utc(ms: int) -> _dt.datetime:
    return _dt.datetime.fromtimestamp(ms / 1000, tz=_dt.timezone.utc)


# --------------------------------------------------------------------------------------------------- signatures
_B = sui.OpenSignatureBody
_T = sui.OpenSignatureBodyType
_R = sui.OpenSignatureReference
_SCALARS = {abi.U8: _T.U8, abi.U16: _T.U16, abi.U64: _T.U64, abi.BOOL: _T.BOOL}


def _datatype(type_name: str, *params: sui.OpenSignatureBody) -> sui.OpenSignatureBody:
    # Generics go in type_parameter_instantiation, never in type_name (pysui splits type_name on "::").
    return _B(type=_T.DATATYPE, type_name=type_name, type_parameter_instantiation=list(params))


def _param_signature(param_type: str, package_id: str, usdc_type: str) -> sui.OpenSignature:
    """One ``abi`` parameter type as a Move ``OpenSignature`` (reference + body)."""
    if param_type in _SCALARS:
        return sui.OpenSignature(body=_B(type=_SCALARS[param_type]))
    if param_type in (abi.OPTION_U8, abi.OPTION_U16):
        return sui.OpenSignature(body=_datatype(OPTION_TYPE, _B(type=_SCALARS[param_type[7:-1]])))
    if param_type == abi.OPTION_STRING:
        # The contract's model name is std::ascii::String.
        return sui.OpenSignature(body=_datatype(OPTION_TYPE, _datatype(ASCII_STRING_TYPE)))
    if param_type in (abi.VECTOR_U8, abi.VECTOR_U64):
        inner = _T.U8 if param_type == abi.VECTOR_U8 else _T.U64
        return sui.OpenSignature(body=_B(type=_T.VECTOR, type_parameter_instantiation=[_B(type=inner)]))
    if param_type == abi.RANDOM:
        return sui.OpenSignature(reference=_R.IMMUTABLE, body=_datatype(RANDOM_TYPE))
    if param_type == abi.USDC_COIN_MUT:
        return sui.OpenSignature(reference=_R.MUTABLE, body=_datatype(COIN_TYPE, _datatype(usdc_type)))
    kind = abi.badge_kind(param_type)
    if kind is not None:
        if param_type.startswith("&mut "):
            ref: sui.OpenSignatureReference | None = _R.MUTABLE
        elif param_type.startswith("&"):
            ref = _R.IMMUTABLE
        else:
            ref = None  # by value
        return sui.OpenSignature(reference=ref, body=_datatype(f"{package_id}::db::{kind}"))
    raise ValueError(f"no Move signature for abi type {param_type!r}")


def function_descriptor(function: str, package_id: str, usdc_type: str) -> sui.FunctionDescriptor:
    """``atoma::db::<function>`` as Sui describes it: ``&mut AtomaDb``, the abi parameters, ``&mut TxContext``.

    TxContext is sent as the datatype ``0x2::tx_context::TxContext`` (pysui drops the parameter by that name).
    """
    params = abi.ENTRY_FUNCTIONS[function]
    signatures = [sui.OpenSignature(reference=_R.MUTABLE, body=_datatype(f"{package_id}::db::AtomaDb"))]
    signatures += [_param_signature(p.type, package_id, usdc_type) for p in params]
    signatures.append(sui.OpenSignature(reference=_R.MUTABLE, body=_datatype(TX_CONTEXT_TYPE)))
    return sui.FunctionDescriptor(
        name=function,
        visibility=sui.FunctionDescriptorVisibility.PUBLIC,
        is_entry=True,
        type_parameters=[],
        parameters=signatures,
        returns=[],
    )
