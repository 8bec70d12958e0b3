"""AtomaDb's table entries as a Sui full node renders them: each entry's ``json`` (``sui_types::proto_value``: u64 as
decimal strings, ``vector<u8>`` as base64, ``Option`` as null or the value) and ``contents`` (BCS), and the table
UIDs the loopback node gives its tables. Used by :mod:`.tables`, which serves them as dynamic field objects.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any, Callable

from atoma_ops.chain.sui.bcs import uleb128
from atoma_ops.chain.sui.movetypes import address_bytes
from atoma_ops.chain.sui.tables import (
    u64_bcs,
)
from atoma_ops.wallet import normalize_address

_UID_DOMAIN = b"atoma-ops/loopback/uid"


def table_uid(parent_id: str, field: str) -> str:
    """The double's UID for the table ``field`` of object ``parent_id``."""
    raw = address_bytes(parent_id)
    return "0x" + hashlib.blake2b(_UID_DOMAIN + raw + field.encode(), digest_size=32).hexdigest()


# ------------------------------------------------------------------------------------------------ BCS, JSON pieces
def u16_bcs(n: int) -> bytes:
    return int(n).to_bytes(2, "little")


def bool_bcs(b: bool) -> bytes:
    return b"\x01" if b else b"\x00"


def opt_bcs(value: Any, enc: Callable[[Any], bytes]) -> bytes:
    return b"\x00" if value is None else b"\x01" + enc(value)


def vec_bcs(items: list, enc: Callable[[Any], bytes]) -> bytes:
    return uleb128(len(items)) + b"".join(enc(i) for i in items)


def bytes_vec_bcs(b: bytes) -> bytes:
    return uleb128(len(b)) + b


def small_id_json(n: int) -> dict:
    return {"inner": str(int(n))}


def b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


def raw_bytes(value: Any) -> bytes | None:
    """The localnet stores byte vectors as hex strings."""
    if value is None:
        return None
    return bytes.fromhex(value) if isinstance(value, str) else bytes(value)


def opt_u64_json(v: Any) -> str | None:
    return None if v is None else str(int(v))


# ------------------------------------------------------------------------------------------------ entry layouts
def node_json(d: dict) -> dict:
    key = raw_bytes(d.get("confidential_compute_public_key_commitment"))
    return {
        "was_disabled_in_epoch": opt_u64_json(d["was_disabled_in_epoch"]),
        "collateral": str(d["collateral"]),  # Balance<USDC>, flattened
        "last_fee_epoch": str(d["last_fee_epoch"]),
        "last_fee_epoch_amount": str(d["last_fee_epoch_amount"]),
        "available_fee_amount": str(d["available_fee_amount"]),
        "reputation_score": {"inner": int(d["reputation_score"])},
        "confidential_compute_last_rotation_counter": opt_u64_json(
            d.get("confidential_compute_last_rotation_counter")
        ),
        "confidential_compute_last_updated_epoch": opt_u64_json(d.get("confidential_compute_last_updated_epoch")),
        "confidential_compute_public_key_commitment": None if key is None else b64(key),
        "confidential_compute_device_types": [int(t) for t in d.get("confidential_compute_device_types", [])],
    }


def node_bcs(d: dict) -> bytes:
    key = raw_bytes(d.get("confidential_compute_public_key_commitment"))
    return (
        opt_bcs(d["was_disabled_in_epoch"], u64_bcs)
        + u64_bcs(d["collateral"])
        + u64_bcs(d["last_fee_epoch"])
        + u64_bcs(d["last_fee_epoch_amount"])
        + u64_bcs(d["available_fee_amount"])
        + bytes([int(d["reputation_score"])])
        + opt_bcs(d.get("confidential_compute_last_rotation_counter"), u64_bcs)
        + opt_bcs(d.get("confidential_compute_last_updated_epoch"), u64_bcs)
        + opt_bcs(key, bytes_vec_bcs)
        + vec_bcs(list(d.get("confidential_compute_device_types", [])), u16_bcs)
    )


def stack_json(d: dict) -> dict:
    return {
        "owner": normalize_address(d["owner"]),
        "price_per_one_million_compute_units": str(d["price_per_one_million_compute_units"]),
        "num_compute_units": str(d["num_compute_units"]),
        "selected_node_id": small_id_json(d["selected_node_id"]),
        "task_small_id": small_id_json(d["task_small_id"]),
        "is_claimed": bool(d["is_claimed"]),
    }


def stack_bcs(d: dict) -> bytes:
    return (
        address_bytes(d["owner"])
        + u64_bcs(d["price_per_one_million_compute_units"])
        + u64_bcs(d["num_compute_units"])
        + u64_bcs(d["selected_node_id"])
        + u64_bcs(d["task_small_id"])
        + bool_bcs(d["is_claimed"])
    )


def price_json(d: dict) -> dict:
    return {
        "node_id": small_id_json(d["node_id"]),
        "price_per_one_million_compute_units": str(d["price_per_one_million_compute_units"]),
        "max_num_compute_units": str(d["max_num_compute_units"]),
    }


def price_bcs(d: dict) -> bytes:
    return (
        u64_bcs(d["node_id"])
        + u64_bcs(d["price_per_one_million_compute_units"])
        + u64_bcs(d["max_num_compute_units"])
    )


def ticket_json(stack_small_id: int, d: dict) -> dict:
    return {
        "id": d["ticket_id"],
        "stack_small_id": small_id_json(stack_small_id),
        "selected_node_id": small_id_json(d["selected_node_id"]),
        "num_claimed_compute_units": str(d["num_claimed_compute_units"]),
        "requested_attestation_nodes": [small_id_json(n) for n in d["requested_attestation_nodes"]],
        "dispute_settled_at_epoch": str(d["dispute_settled_at_epoch"]),
        "committed_stack_proof": b64(raw_bytes(d["committed_stack_proof"])),
        "stack_merkle_leaves_vector": b64(raw_bytes(d["stack_merkle_leaves_vector"])),
        "already_attested_nodes": [small_id_json(n) for n in d["already_attested_nodes"]],
        "is_in_dispute": bool(d["is_in_dispute"]),
    }


def ticket_bcs(stack_small_id: int, d: dict) -> bytes:
    return (
        address_bytes(d["ticket_id"])
        + u64_bcs(stack_small_id)
        + u64_bcs(d["selected_node_id"])
        + u64_bcs(d["num_claimed_compute_units"])
        + vec_bcs(d["requested_attestation_nodes"], u64_bcs)
        + u64_bcs(d["dispute_settled_at_epoch"])
        + bytes_vec_bcs(raw_bytes(d["committed_stack_proof"]))
        + bytes_vec_bcs(raw_bytes(d["stack_merkle_leaves_vector"]))
        + vec_bcs(d["already_attested_nodes"], u64_bcs)
        + bool_bcs(d["is_in_dispute"])
    )


# ------------------------------------------------------------------------------------------------ the view
