"""Stack commitments (design.md "Commitments", atoma-protocol.md §8): hand-computed vectors.

Every expected value is computed here, step by step, with ``hashlib.blake2b(digest_size=32)`` — never with the
module's own helpers — so that a change of formula in ``atoma_ops.protocol.commitments`` shows up as a failure.
"""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from atoma_ops.protocol import commitments as cm


def H(data: bytes) -> bytes:
    """blake2b-256, written out independently of the module."""
    return hashlib.blake2b(data, digest_size=32).digest()


# five distinct 32-byte leaves
A, B, C, D, E = (H(name) for name in (b"a", b"b", b"c", b"d", b"e"))


# ====================================================================== Merkle roots
def test_root_of_one_leaf_is_the_leaf():
    assert cm.merkle_root([A]) == A


def test_root_of_two_leaves():
    assert cm.merkle_root([A, B]) == H(A + B)


def test_root_of_three_leaves_promotes_the_unpaired_last():
    ab = H(A + B)
    expected = H(ab + C)  # level 1 = [H(a‖b), c]  (c promoted unchanged, not duplicated)
    assert cm.merkle_root([A, B, C]) == expected
    assert expected != H(ab + H(C + C))  # not Bitcoin-style duplication


def test_root_of_five_leaves():
    ab = H(A + B)
    cd = H(C + D)
    # level 1 = [H(a‖b), H(c‖d), e]; level 2 = [H(l0‖l1), e]; root = H(H(l0‖l1) ‖ e)
    abcd = H(ab + cd)
    expected = H(abcd + E)
    assert cm.merkle_root([A, B, C, D, E]) == expected


def test_root_depends_on_order():
    assert cm.merkle_root([A, B]) != cm.merkle_root([B, A])


def test_leaves_are_not_rehashed():
    assert cm.merkle_root([A, B]) != H(H(A) + H(B))


# ====================================================================== leaf_i and the proof
def test_stack_leaves_and_proof_k1():
    root = H(H(A + B) + C)
    leaf0 = H(b"\x00" + root)
    leaf1 = H(b"\x01" + root)
    proof = H(leaf0 + leaf1)
    for position, leaf in ((0, leaf0), (1, leaf1)):
        c = cm.commit([A, B, C], 1, position=position)
        assert c.root == root
        assert c.committed_stack_proof == proof  # identical for every honest node
        assert c.stack_merkle_leaf == leaf
        assert c.position == position and c.num_leaves == 3
    # the contract's final check (§8.1): blake2b256(leaves buffer) == proof
    assert H(cm.commit([A, B, C], 1, 0).stack_merkle_leaf + cm.commit([A, B, C], 1, 1).stack_merkle_leaf) == proof


def test_stack_leaves_and_proof_k2():
    root = H(H(H(A + B) + H(C + D)) + E)
    leaf0, leaf1, leaf2 = (H(bytes([i]) + root) for i in range(3))
    proof = H(leaf0 + leaf1 + leaf2)
    got = [cm.commit([A, B, C, D, E], 2, position=p) for p in range(3)]
    assert [c.stack_merkle_leaf for c in got] == [leaf0, leaf1, leaf2]
    assert {c.committed_stack_proof for c in got} == {proof}
    assert H(b"".join(c.stack_merkle_leaf for c in got)) == proof


def test_proof_with_one_leaf_history():
    leaf0, leaf1 = H(b"\x00" + A), H(b"\x01" + A)
    c = cm.commit([A], 1)
    assert (c.root, c.committed_stack_proof, c.stack_merkle_leaf) == (A, H(leaf0 + leaf1), leaf0)


def test_proof_with_no_extra_nodes():
    """k = 0: proof = H(leaf_0) (the contract's buffer is just leaf_0)."""
    leaf0 = H(b"\x00" + A)
    assert cm.commit([A], 0).committed_stack_proof == H(leaf0)


def test_stack_leaf_index_is_one_byte():
    root = H(b"root")
    assert cm.stack_leaf(255, root) == H(b"\xff" + root)
    with pytest.raises(ValueError):
        cm.stack_leaf(256, root)
    with pytest.raises(ValueError):
        cm.stack_leaf(-1, root)


def test_historical_formula_differs_from_the_proof():
    """atoma-node's old proof = H(0x00 ‖ R) (= its own leaf_0): never H(leaf_0 ‖ leaf_1) (§8.3)."""
    root = H(A + B)
    historical = H(b"\x00" + root)
    assert cm.historical_node_proof(root) == historical
    assert historical == cm.commit([A, B], 1).stack_merkle_leaf
    assert historical != cm.commit([A, B], 1).committed_stack_proof
    assert historical != H(H(b"\x00" + root) + H(b"\x01" + root))


# ====================================================================== errors
def test_empty_history_raises():
    with pytest.raises(ValueError):
        cm.merkle_root([])
    with pytest.raises(ValueError):
        cm.commit([], 1)


@pytest.mark.parametrize("bad", [b"", b"\x00" * 31, b"\x00" * 33, b"\x00" * 64])
def test_leaf_that_is_not_32_bytes_raises(bad):
    with pytest.raises(ValueError):
        cm.merkle_root([bad])
    with pytest.raises(ValueError):
        cm.merkle_root([A, B, bad])
    with pytest.raises(ValueError):
        cm.commit([A, bad], 1)


@pytest.mark.parametrize("extra, position", [(1, 2), (1, -1), (0, 1), (2, 3)])
def test_position_out_of_range_raises(extra, position):
    with pytest.raises(ValueError):
        cm.commit([A, B], extra, position=position)


# ====================================================================== canonical request bytes
REQUEST = {
    "model": "meta-llama/Llama-3.3-70B-Instruct",
    "messages": [
        {"role": "system", "content": "Réponds en français."},
        {"role": "user", "content": "2 × 3 = ?"},
    ],
    "max_tokens": 16,
    "temperature": 0.0,
}
# sorted keys at every level, no spaces, UTF-8 with non-ASCII kept (é = c3 a9, ç = c3 a7, × = c3 97)
REQUEST_BYTES = (
    b'{"max_tokens":16,'
    b'"messages":[{"content":"R\xc3\xa9ponds en fran\xc3\xa7ais.","role":"system"},'
    b'{"content":"2 \xc3\x97 3 = ?","role":"user"}],'
    b'"model":"meta-llama/Llama-3.3-70B-Instruct",'
    b'"temperature":0.0}'
)


def test_canonical_request_bytes():
    assert cm.canonical_request(REQUEST) == REQUEST_BYTES
    assert cm.payload_hash(REQUEST) == H(REQUEST_BYTES)


def test_canonical_request_ignores_key_order():
    reordered = {k: REQUEST[k] for k in reversed(list(REQUEST))}
    reordered["messages"] = [{"content": m["content"], "role": m["role"]} for m in REQUEST["messages"]]
    assert cm.canonical_request(reordered) == REQUEST_BYTES


def test_every_request_field_counts():
    assert cm.payload_hash({**REQUEST, "max_tokens": 17}) != cm.payload_hash(REQUEST)
    assert cm.payload_hash({**REQUEST, "user": "x"}) != cm.payload_hash(REQUEST)


# ====================================================================== response hashing
RESPONSE = {
    "id": "chatcmpl-123",
    "object": "chat.completion",
    "created": 1_700_000_000,
    "model": "meta-llama/Llama-3.3-70B-Instruct",
    "system_fingerprint": "fp_abc",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "6"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 21, "completion_tokens": 1, "total_tokens": 22},
}
RESPONSE_BYTES = (
    b'{"choices":[{"finish_reason":"stop","index":0,"message":{"content":"6","role":"assistant"}}],'
    b'"usage":{"completion_tokens":1,"prompt_tokens":21}}'
)


def test_canonical_response_bytes():
    assert cm.canonical_response(RESPONSE) == RESPONSE_BYTES
    assert cm.response_hash(RESPONSE) == H(RESPONSE_BYTES)


@pytest.mark.parametrize(
    "field, value",
    [("id", "chatcmpl-999"), ("created", 1_800_000_000), ("system_fingerprint", "fp_other"), ("model", "alias")],
)
def test_response_hash_ignores_nondeterministic_fields(field, value):
    assert cm.response_hash({**RESPONSE, field: value}) == cm.response_hash(RESPONSE)
    assert cm.response_hash({k: v for k, v in RESPONSE.items() if k != field}) == cm.response_hash(RESPONSE)


def _choice(**changes):
    choice = {"index": 0, "message": {"role": "assistant", "content": "6"}, "finish_reason": "stop"}
    message = {**choice["message"], **changes.pop("message", {})}
    return {**choice, **changes, "message": message}


@pytest.mark.parametrize(
    "changed",
    [
        {**RESPONSE, "choices": [_choice(message={"content": "7"})]},
        {**RESPONSE, "choices": [_choice(finish_reason="length")]},
        {**RESPONSE, "usage": {"prompt_tokens": 21, "completion_tokens": 2, "total_tokens": 23}},
        {**RESPONSE, "usage": {"prompt_tokens": 20, "completion_tokens": 1, "total_tokens": 21}},
    ],
    ids=["content", "finish_reason", "completion_tokens", "prompt_tokens"],
)
def test_response_hash_changes_with_what_was_generated(changed):
    assert cm.response_hash(changed) != cm.response_hash(RESPONSE)


def test_request_leaf_and_leaves_of():
    p, r = H(REQUEST_BYTES), H(RESPONSE_BYTES)
    assert cm.request_leaf(p, r) == H(p + r)
    assert cm.request_leaf(p, r) != H(r + p)
    assert cm.leaves_of([(REQUEST, RESPONSE)]) == [H(p + r)]


# ====================================================================== properties
def reference_root(leaves: list[bytes]) -> bytes:
    """Recursive reference: left subtree = the largest power of two strictly below n (RFC 6962 split, without its
    domain-separation prefixes). Pairing level by level with the unpaired last node promoted gives the same tree."""
    n = len(leaves)
    if n == 1:
        return leaves[0]
    k = 1
    while k * 2 < n:
        k *= 2
    return H(reference_root(leaves[:k]) + reference_root(leaves[k:]))


leaf_st = st.binary(min_size=32, max_size=32)


@settings(max_examples=200, deadline=None)
@given(st.lists(leaf_st, min_size=1, max_size=70))
def test_root_matches_the_recursive_reference(leaves):
    assert cm.merkle_root(leaves) == reference_root(leaves)


def test_reference_agrees_with_hand_vectors():
    assert reference_root([A, B, C]) == H(H(A + B) + C)
    assert reference_root([A, B, C, D, E]) == H(H(H(A + B) + H(C + D)) + E)


@settings(max_examples=200, deadline=None)
@given(st.lists(leaf_st, min_size=1, max_size=40, unique=True), st.data())
def test_root_changes_if_any_single_leaf_changes(leaves, data):
    i = data.draw(st.integers(0, len(leaves) - 1))
    new = data.draw(leaf_st.filter(lambda x: x != leaves[i]))
    changed = leaves[:i] + [new] + leaves[i + 1:]
    assert cm.merkle_root(changed) != cm.merkle_root(leaves)


@settings(max_examples=200, deadline=None)
@given(st.lists(leaf_st, min_size=2, max_size=40, unique=True), st.data())
def test_root_changes_if_two_leaves_swap(leaves, data):
    i = data.draw(st.integers(0, len(leaves) - 1))
    j = data.draw(st.integers(0, len(leaves) - 1))
    assume(i != j)
    swapped = list(leaves)
    swapped[i], swapped[j] = swapped[j], swapped[i]
    assert cm.merkle_root(swapped) != cm.merkle_root(leaves)


@settings(max_examples=100, deadline=None)
@given(st.lists(leaf_st, min_size=1, max_size=20), st.integers(0, 4))
def test_every_honest_position_passes_the_contract_check(leaves, extra):
    got = [cm.commit(leaves, extra, position=p) for p in range(extra + 1)]
    proof = got[0].committed_stack_proof
    assert all(c.committed_stack_proof == proof for c in got)
    assert H(b"".join(c.stack_merkle_leaf for c in got)) == proof


def test_tool_calls_are_part_of_the_response_hash_but_their_ids_are_not():
    from atoma_ops.protocol.commitments import response_hash

    def with_call(call_id: str, arguments: str) -> dict:
        call = {"id": call_id, "type": "function", "function": {"name": "get_weather", "arguments": arguments}}
        return {
            "choices": [{"index": 0, "message": {"role": "assistant", "content": None, "tool_calls": [call]},
                         "finish_reason": "tool_calls"}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5},
        }

    assert response_hash(with_call("call_a", '{"city": "Paris"}')) == response_hash(with_call("call_b", '{"city": "Paris"}'))
    assert response_hash(with_call("call_a", '{"city": "Paris"}')) != response_hash(with_call("call_a", '{"city": "Rome"}'))


def test_nan_in_a_request_is_refused():
    from atoma_ops.protocol.commitments import payload_hash

    with pytest.raises(ValueError):
        payload_hash({"messages": [], "temperature": float("nan")})
