"""Atoma's events, decoded once: the values of Sui's ``parsedJson`` (atoma-protocol.md §7) as Python values, and each
``atoma::db`` event as a typed record.

In ``parsedJson`` a u64 is a decimal string, a small id ``{"inner": "7"}``, TaskRole/SecurityLevel
``{"inner": 2}``, a ``vector<u8>`` an array of numbers (some RPCs render it base64 or hex), an ``Option`` the value
or null. Everything in the package that reads an event or a small id goes through here, so a change of shape is
one change.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
from typing import Any, Iterable, Mapping

__all__ = [
    "EVENT_FIELDS",
    "AtomaEvent",
    "byte_vector",
    "decode_event",
    "optional",
    "small_id",
    "small_ids",
    "u64",
]


def small_id(value: Any) -> int:
    """``{"inner": "7"}`` (or ``{"inner": 7}``, ``"7"``, ``7``) → 7; ValueError for anything else."""
    inner = value.get("inner") if isinstance(value, Mapping) else value
    if isinstance(inner, bool) or not isinstance(inner, (int, str)):
        raise ValueError(f"not a small id: {value!r}")
    number = int(inner)
    if number < 0:
        raise ValueError(f"not a small id: {value!r}")
    return number


def small_ids(values: Iterable[Any] | None) -> list[int]:
    """A ``vector<…SmallId>``: each element through :func:`small_id` (None is the empty vector)."""
    return [small_id(v) for v in values or []]


def u64(value: Any) -> int:
    """A u64 (a decimal string in ``parsedJson``, or a number) → int; ValueError otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"not a u64: {value!r}")
    return int(value)


def byte_vector(value: Any) -> bytes:
    """A ``vector<u8>``: an array of numbers, bytes, ``0x`` hex or base64 → bytes; ValueError otherwise."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str):
        try:
            if value.startswith("0x"):
                return bytes.fromhex(value[2:])
            return base64.b64decode(value, validate=True)
        except (ValueError, binascii.Error):
            raise ValueError(f"not a byte vector: {value[:40]!r}") from None
    if isinstance(value, (list, tuple)):
        return bytes(value)
    raise ValueError(f"not a byte vector: {value!r}")


def optional(decode):
    """``decode`` for an ``Option<T>`` (or a value that may be absent): None stays None."""
    return lambda v: None if v is None else decode(v)


def _same(v: Any) -> Any:
    return v


_SID, _SIDS, _U64, _BYTES = small_id, small_ids, u64, byte_vector

#: Each event's fields (atoma-protocol.md §7) and how its ``parsedJson`` value decodes. Fields not listed here
#: (ids, addresses, strings) are kept as they are.
EVENT_FIELDS: dict[str, dict[str, Any]] = {
    "NodeRegisteredEvent": {"badge_id": _same, "node_small_id": _SID},
    "NodeSubscribedToTaskEvent": {"task_small_id": _SID, "node_small_id": _SID,
                                  "price_per_one_million_compute_units": _U64, "max_num_compute_units": _U64},
    "NodeSubscriptionUpdatedEvent": {"node_small_id": _SID, "task_small_id": _SID,
                                     "price_per_one_million_compute_units": _U64, "max_num_compute_units": _U64},
    "NodeUnsubscribedFromTaskEvent": {"task_small_id": _SID, "node_small_id": _SID},
    "TaskRegisteredEvent": {"task_id": _same, "task_small_id": _SID, "role": _SID, "model_name": _same,
                            "security_level": _SID, "minimum_reputation_score": _same},
    "TaskDeprecationEvent": {"task_id": _same, "task_small_id": _SID, "epoch": _U64},
    "TaskRemovedEvent": {"task_id": _same, "task_small_id": _SID, "removed_at_epoch": _U64},
    "StackCreatedEvent": {"stack_id": _same, "stack_small_id": _SID, "owner": _same, "task_small_id": _SID,
                          "selected_node_id": _SID, "num_compute_units": _U64,
                          "price_per_one_million_compute_units": _U64},
    "StackTrySettleEvent": {"stack_small_id": _SID, "selected_node_id": _SID, "requested_attestation_nodes": _SIDS,
                            "committed_stack_proof": _BYTES, "stack_merkle_leaf": _BYTES,
                            "num_claimed_compute_units": _U64},
    "NewStackSettlementAttestationEvent": {"stack_small_id": _SID, "attestation_node_id": _SID,
                                           "committed_stack_proof": _BYTES, "stack_merkle_leaf": _BYTES},
    "StackSettlementTicketEvent": {"stack_small_id": _SID, "selected_node_id": _SID, "num_claimed_compute_units": _U64,
                                   "requested_attestation_nodes": _SIDS, "dispute_settled_at_epoch": _U64,
                                   "committed_stack_proof": _BYTES},
    "StackSettlementTicketClaimedEvent": {"stack_small_id": _SID, "selected_node_id": _SID,
                                          "attestation_nodes": _SIDS, "num_claimed_compute_units": _U64,
                                          "user_refund_amount": _U64},
    "StackAttestationDisputeEvent": {"stack_small_id": _SID, "attestation_commitment": _BYTES,
                                     "attestation_node_id": _SID, "original_node_id": _SID,
                                     "original_commitment": _BYTES},
    "ClaimedStackEvent": {"stack_small_id": _SID, "selected_node_id": _SID, "num_claimed_compute_units": _U64,
                          "user_refund_amount": _U64},
}


@dataclasses.dataclass(frozen=True)
class AtomaEvent:
    """One decoded event: its name and its fields as Python values (small ids and u64 as int, byte vectors as bytes,
    lists of small ids as lists of int). Read a field as an attribute: ``event.stack_small_id``."""

    name: str
    fields: dict[str, Any]

    def __getattr__(self, field: str) -> Any:
        try:
            return self.__dict__["fields"][field]
        except KeyError:
            raise AttributeError(f"{self.__dict__.get('name', 'event')} has no field {field!r}") from None

    def get(self, field: str, default: Any = None) -> Any:
        return self.fields.get(field, default)


def decode_event(name: str, parsed_json: Mapping[str, Any]) -> AtomaEvent:
    """``name``'s ``parsedJson`` decoded field by field (ValueError naming the field if one is malformed). A field
    the event should have and does not is missing from the result, not invented; an unknown event keeps its
    values as they are."""
    spec = EVENT_FIELDS.get(name, {})
    out: dict[str, Any] = {}
    for field, value in parsed_json.items():
        decode = spec.get(field, _same)
        try:
            out[field] = decode(value)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{name}.{field}: {exc}") from None
    return AtomaEvent(name, out)
