"""Atoma's event values decoded once (atoma_ops.protocol.events), on parsedJson shapes written by hand from
atoma-protocol.md §7."""

from __future__ import annotations

import pytest

from atoma_ops.protocol.events import byte_vector, decode_event, optional, small_id, small_ids, u64


def test_small_ids_in_every_shape_sui_renders():
    assert small_id({"inner": "7"}) == 7 and small_id({"inner": 3}) == 3 and small_id("12") == 12 and small_id(5) == 5
    assert small_ids([{"inner": "2"}, {"inner": "9"}]) == [2, 9] and small_ids(None) == []


@pytest.mark.parametrize("bad", [{"outer": "7"}, {"inner": None}, None, 1.5, True, "-3", {"inner": "x"}])
def test_what_is_not_a_small_id_is_a_value_error(bad):
    with pytest.raises(ValueError):
        small_id(bad)


def test_u64_and_byte_vectors():
    assert u64("18446744073709551615") == 2**64 - 1 and u64(0) == 0
    assert byte_vector([1, 2, 255]) == b"\x01\x02\xff" and byte_vector("0x0102") == b"\x01\x02"
    assert byte_vector("AQL/") == b"\x01\x02\xff"  # base64, as Sui's gRPC renders vector<u8>
    assert optional(u64)(None) is None and optional(u64)("4") == 4
    with pytest.raises(ValueError):
        u64(None)
    with pytest.raises(ValueError):
        byte_vector("not base64!")


def test_an_event_decodes_field_by_field():
    event = decode_event("StackTrySettleEvent", {
        "stack_small_id": {"inner": "4"},
        "selected_node_id": {"inner": "1"},
        "requested_attestation_nodes": [{"inner": "2"}, {"inner": "3"}],
        "committed_stack_proof": [0xAB] * 32,
        "stack_merkle_leaf": [0xCD] * 32,
        "num_claimed_compute_units": "250000",
    })
    assert event.name == "StackTrySettleEvent"
    assert (event.stack_small_id, event.selected_node_id, event.requested_attestation_nodes) == (4, 1, [2, 3])
    assert event.committed_stack_proof == b"\xab" * 32 and event.num_claimed_compute_units == 250_000
    with pytest.raises(AttributeError):
        event.user_refund_amount  # noqa: B018 - not a field of this event
    task = decode_event("TaskRegisteredEvent", {"task_small_id": {"inner": "1"}, "role": {"inner": 0},
                                                "model_name": None, "security_level": {"inner": 2}})
    assert (task.task_small_id, task.role, task.model_name, task.security_level) == (1, 0, None, 2)


def test_a_malformed_field_is_named():
    with pytest.raises(ValueError, match=r"StackCreatedEvent\.num_compute_units"):
        decode_event("StackCreatedEvent", {"stack_small_id": {"inner": "1"}, "num_compute_units": [1]})
