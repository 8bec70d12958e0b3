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
# the body's own key order at every level (as the buyer signed it), no spaces, UTF-8 with non-ASCII kept
# (é = c3 a9, ç = c3 a7, × = c3 97), a float with its ".0" (serde_json's Ryū)
REQUEST_BYTES = (
    b'{"model":"meta-llama/Llama-3.3-70B-Instruct",'
    b'"messages":[{"role":"system","content":"R\xc3\xa9ponds en fran\xc3\xa7ais."},'
    b'{"role":"user","content":"2 \xc3\x97 3 = ?"}],'
    b'"max_tokens":16,'
    b'"temperature":0.0}'
)


def test_canonical_request_bytes():
    assert cm.canonical_request(REQUEST) == REQUEST_BYTES
    assert cm.payload_hash(REQUEST) == H(REQUEST_BYTES)


def test_key_order_counts_as_the_buyer_signed_it():
    """The payload hash is the hash under the buyer's X-Signature: the Atoma node hashes the body re-serialised in
    its own key order, so a reordered body is another payload."""
    reordered = {k: REQUEST[k] for k in reversed(list(REQUEST))}
    assert cm.canonical_request(reordered) == (
        b'{"temperature":0.0,"max_tokens":16,'
        b'"messages":[{"role":"system","content":"R\xc3\xa9ponds en fran\xc3\xa7ais."},'
        b'{"role":"user","content":"2 \xc3\x97 3 = ?"}],'
        b'"model":"meta-llama/Llama-3.3-70B-Instruct"}'
    )
    assert cm.payload_hash(reordered) != cm.payload_hash(REQUEST)


def test_a_history_stored_with_sorted_keys_keeps_its_payload_hash():
    """Stores written before kept the request with sorted keys and hashed those bytes: read back in that order, the
    compact form is the same bytes, so old histories still verify."""
    sorted_bytes = (
        b'{"max_tokens":16,'
        b'"messages":[{"content":"R\xc3\xa9ponds en fran\xc3\xa7ais.","role":"system"},'
        b'{"content":"2 \xc3\x97 3 = ?","role":"user"}],'
        b'"model":"meta-llama/Llama-3.3-70B-Instruct",'
        b'"temperature":0.0}'
    )
    import json

    assert cm.payload_hash(json.loads(sorted_bytes)) == H(sorted_bytes)


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


# ====================================================================== the frontier (commitment kept as you go)
# eight distinct leaves; every expected root below is written out by hand from the level-by-level rule
# (pair left to right, an unpaired last node promoted unchanged), not derived from the frontier's own recurrence
L0, L1, L2, L3, L4, L5, L6, L7 = (H(b"leaf %d" % i) for i in range(8))
H01, H23, H45, H67 = H(L0 + L1), H(L2 + L3), H(L4 + L5), H(L6 + L7)
H0123 = H(H01 + H23)
HAND_ROOTS = {
    1: L0,                                  # one leaf is its own root
    2: H01,
    3: H(H01 + L2),                         # [H01, l2] -> l2 promoted at level 1
    4: H0123,
    5: H(H0123 + L4),                       # [H01, H23, l4] -> [H0123, l4] -> root
    6: H(H0123 + H45),
    7: H(H0123 + H(H45 + L6)),              # [H01, H23, H45, l6] -> [H0123, H(H45 ‖ l6)]
    8: H(H0123 + H(H45 + H67)),
}
# the frontier after N leaves: (height, root of the perfect subtree), biggest first — one per set bit of N
HAND_FRONTIERS = {
    1: [(0, L0)],
    2: [(1, H01)],
    3: [(1, H01), (0, L2)],
    4: [(2, H0123)],
    5: [(2, H0123), (0, L4)],
    6: [(2, H0123), (1, H45)],
    7: [(2, H0123), (1, H45), (0, L6)],
    8: [(3, H(H0123 + H(H45 + H67)))],
}
EIGHT = [L0, L1, L2, L3, L4, L5, L6, L7]


@pytest.mark.parametrize("n", range(1, 9))
def test_frontier_root_equals_the_hand_computed_root(n):
    frontier = cm.MerkleFrontier()
    for leaf in EIGHT[:n]:
        frontier = frontier.fold(leaf)
    assert frontier.count == len(frontier) == n
    assert frontier.subtrees() == HAND_FRONTIERS[n]
    assert frontier.root() == HAND_ROOTS[n] == cm.merkle_root(EIGHT[:n])


def test_hand_roots_agree_with_the_existing_five_leaf_vector():
    # the same rule as test_root_of_five_leaves, with other leaves: a typo in the table above would show here
    assert cm.merkle_root(EIGHT[:5]) == HAND_ROOTS[5]
    assert HAND_ROOTS[7] != H(H0123 + H(H45 + H(L6 + L6)))  # promotion, not duplication


def test_frontier_of_every_prefix_up_to_300_leaves_equals_merkle_root():
    leaves = [H(b"prefix %d" % i) for i in range(300)]
    frontier = cm.MerkleFrontier()
    for n, leaf in enumerate(leaves, start=1):
        frontier = frontier.fold(leaf)
        assert frontier.root() == cm.merkle_root(leaves[:n]), n
        assert len(frontier.nodes) == bin(n).count("1")  # O(log N) hashes kept, never more
    assert cm.MerkleFrontier.from_leaves(leaves) == frontier


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 13, 64, 255, 256, 257])
@pytest.mark.parametrize("extra, position", [(0, 0), (1, 0), (1, 1), (2, 2)])
def test_frontier_commit_equals_commit_over_the_leaves(n, extra, position):
    leaves = [H(b"c %d" % i) for i in range(n)]
    assert cm.MerkleFrontier.from_leaves(leaves).commit(extra, position) == cm.commit(leaves, extra, position)


def test_fold_leaves_the_old_frontier_unchanged():
    one = cm.MerkleFrontier().fold(L0)
    two = one.fold(L1)
    assert one.subtrees() == [(0, L0)] and one.count == 1  # a rolled-back store transaction keeps the old one
    assert two.subtrees() == [(1, H01)]
    assert one != two and one == cm.MerkleFrontier(1, [L0]) and hash(one) == hash(cm.MerkleFrontier(1, [L0]))


def test_frontier_bytes_by_hand():
    assert cm.MerkleFrontier().to_bytes() == b"\x00" * 8
    five = cm.MerkleFrontier.from_leaves(EIGHT[:5])
    assert five.to_bytes() == b"\x00\x00\x00\x00\x00\x00\x00\x05" + H0123 + L4  # N big-endian, then biggest first
    assert len(cm.MerkleFrontier.from_leaves(EIGHT[:7]).to_bytes()) == 8 + 3 * 32
    assert cm.MerkleFrontier.from_bytes(five.to_bytes()) == five
    assert cm.MerkleFrontier.from_bytes(bytearray(five.to_bytes())).root() == HAND_ROOTS[5]


def test_a_persisted_frontier_resumes_where_it_stopped():
    """The node store's pattern: read the frontier beside the stack, fold the new leaf, write it back."""
    stored = cm.MerkleFrontier().to_bytes()
    for leaf in EIGHT:
        stored = cm.MerkleFrontier.from_bytes(stored).fold(leaf).to_bytes()
    assert cm.MerkleFrontier.from_bytes(stored).root() == HAND_ROOTS[8]


@pytest.mark.parametrize(
    "data",
    [b"", b"\x00" * 7, b"\x00" * 7 + b"\x01",  # one leaf but no node
     b"\x00" * 7 + b"\x01" + b"\x00" * 31, b"\x00" * 7 + b"\x01" + b"\x00" * 64, b"\x00" * 8 + b"\x00" * 32],
    ids=["empty", "short", "missing-node", "short-node", "extra-node", "nodes-for-zero"],
)
def test_malformed_frontier_bytes_are_refused(data):
    with pytest.raises(ValueError):
        cm.MerkleFrontier.from_bytes(data)


def test_frontier_refuses_bad_parts_and_empty_roots():
    with pytest.raises(ValueError):
        cm.MerkleFrontier(3, [L0])  # 3 = 0b11 needs two subtree roots
    with pytest.raises(ValueError):
        cm.MerkleFrontier(1, [b"\x00" * 31])
    with pytest.raises(ValueError):
        cm.MerkleFrontier(-1, [])
    with pytest.raises(ValueError):
        cm.MerkleFrontier().fold(b"\x00" * 33)
    with pytest.raises(ValueError):
        cm.MerkleFrontier().extend([L0, b"short"])
    with pytest.raises(ValueError):
        cm.MerkleFrontier().root()  # like merkle_root([]): an empty stack has nothing to commit to
    with pytest.raises(ValueError):
        cm.MerkleFrontier.from_leaves([L0]).commit(1, position=2)


@settings(max_examples=150, deadline=None)
@given(st.lists(leaf_st, min_size=1, max_size=400), st.data())
def test_frontier_matches_merkle_root_for_random_leaves(leaves, data):
    cut = data.draw(st.integers(0, len(leaves)))
    # folded one at a time up to the cut, persisted, then the rest folded at once: the store's resumption
    head = cm.MerkleFrontier()
    for leaf in leaves[:cut]:
        head = head.fold(leaf)
    whole = cm.MerkleFrontier.from_bytes(head.to_bytes()).extend(leaves[cut:])
    assert whole.root() == cm.merkle_root(leaves) == reference_root(leaves)
    assert whole == cm.MerkleFrontier.from_leaves(leaves)
    extra = data.draw(st.integers(0, 3))
    position = data.draw(st.integers(0, extra))
    assert whole.commit(extra, position) == cm.commit(leaves, extra, position)
