"""Stack commitments: request leaves, the Merkle root and the values sent to the contract (design.md "Commitments").

Both the serving node and every attester compute exactly this:

- payload hash = blake2b-256(canonical request bytes); response hash = blake2b-256(canonical response bytes, the
  response's deterministic fields only); request leaf = blake2b-256(payload hash ‖ response hash);
- ``R`` = Merkle root over the request leaves in serving order: leaves used as they are, parent =
  blake2b-256(left ‖ right), an unpaired last node promoted unchanged, one leaf is its own root;
- ``leaf_i = blake2b-256(u8(i) ‖ R)``; ``committed_stack_proof = blake2b-256(leaf_0 ‖ … ‖ leaf_k)`` with k the
  contract's ``cross_validation_extra_nodes_count``. The selected node submits ``leaf_0``; the attester at position
  j of ``requested_attestation_nodes`` submits ``leaf_{j+1}``.

With these, the contract's final check ``blake2b256(leaves buffer) == proof`` holds when everyone is honest
(atoma-protocol.md §8.1); the historical node formula ``blake2b256(0x00 ‖ R)`` never passes it (§8.3).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

HASH_LEN = 32


def blake2b256(data: bytes) -> bytes:
    """``sui::hash::blake2b256``: unkeyed BLAKE2b with a 32-byte digest."""
    return hashlib.blake2b(data, digest_size=HASH_LEN).digest()


def canonical_json(value: Any) -> bytes:
    """Sorted keys, no spaces, UTF-8: one byte string per JSON value, whoever serialises it."""
    # NaN/Infinity are not JSON: refuse them rather than hash bytes no other JSON library would produce.
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def canonical_request(request: dict) -> bytes:
    """The request body as canonical JSON (every field counts: it is what the buyer asked for)."""
    return canonical_json(request)


def deterministic_response(response: dict) -> dict:
    """The fields of an OpenAI chat completion that replay must reproduce: no ids, timestamps, fingerprints or
    model aliases, only what was generated and what it cost."""
    choices = []
    for choice in response.get("choices", []):
        message = choice.get("message") or {}
        kept = {"role": message.get("role"), "content": message.get("content")}
        if message.get("tool_calls"):
            # Tool calls are generated output too (their ids are random on some servers: keep name and arguments).
            kept["tool_calls"] = [
                {"type": c.get("type"), "function": {k: (c.get("function") or {}).get(k) for k in ("name", "arguments")}}
                for c in message["tool_calls"]
            ]
        choices.append({"index": choice.get("index", 0), "message": kept, "finish_reason": choice.get("finish_reason")})
    usage = response.get("usage") or {}
    return {
        "choices": choices,
        "usage": {"prompt_tokens": usage.get("prompt_tokens"), "completion_tokens": usage.get("completion_tokens")},
    }


def canonical_response(response: dict) -> bytes:
    return canonical_json(deterministic_response(response))


def payload_hash(request: dict) -> bytes:
    return blake2b256(canonical_request(request))


def response_hash(response: dict) -> bytes:
    return blake2b256(canonical_response(response))


def request_leaf(payload: bytes, response: bytes) -> bytes:
    """``blake2b-256(payload hash ‖ response hash)``."""
    return blake2b256(payload + response)


def merkle_root(leaves: Sequence[bytes]) -> bytes:
    """Merkle root over leaves used as they are; an unpaired last node is promoted unchanged.

    Raises:
        ValueError: no leaves (an empty stack has nothing to commit to), or a leaf that is not 32 bytes.
    """
    if not leaves:
        raise ValueError("cannot commit to an empty history")
    level = list(leaves)
    for leaf in level:
        if len(leaf) != HASH_LEN:
            raise ValueError(f"a leaf must be {HASH_LEN} bytes, got {len(leaf)}")
    hasher = hashlib.blake2b
    while len(level) > 1:
        nxt = [hasher(level[i] + level[i + 1], digest_size=HASH_LEN).digest() for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0]


def stack_leaf(index: int, root: bytes) -> bytes:
    """``leaf_i = blake2b-256(u8(i) ‖ R)``: 0 for the selected node, j+1 for the j-th requested attester."""
    if not 0 <= index <= 255:
        raise ValueError("the leaf index is a u8")
    return blake2b256(bytes([index]) + root)


def committed_stack_proof(root: bytes, extra_nodes_count: int) -> bytes:
    """``blake2b-256(leaf_0 ‖ … ‖ leaf_k)``, k = ``cross_validation_extra_nodes_count``."""
    return blake2b256(b"".join(stack_leaf(i, root) for i in range(extra_nodes_count + 1)))


def historical_node_proof(root: bytes) -> bytes:
    """What atoma-node computed until May 2025: ``blake2b-256(0x00 ‖ R)``. It always ends in a dispute."""
    return blake2b256(b"\x00" + root)


@dataclass(frozen=True)
class Commitment:
    """What a node sends to ``try_settle_stack`` (position 0) or ``submit_stack_settlement_attestation``."""

    root: bytes
    committed_stack_proof: bytes
    stack_merkle_leaf: bytes
    position: int
    num_leaves: int


def commit(leaves: Sequence[bytes], extra_nodes_count: int, position: int = 0) -> Commitment:
    """The commitment of a history's request leaves, for the node at ``position`` (0 = selected node)."""
    if not 0 <= position <= extra_nodes_count:
        raise ValueError(f"position {position} is outside 0..{extra_nodes_count}")
    root = merkle_root(leaves)
    return Commitment(
        root=root,
        committed_stack_proof=committed_stack_proof(root, extra_nodes_count),
        stack_merkle_leaf=stack_leaf(position, root),
        position=position,
        num_leaves=len(leaves),
    )


def leaves_of(pairs: Iterable[tuple[dict, dict]]) -> list[bytes]:
    """Request leaves of (request, response) pairs in serving order."""
    return [request_leaf(payload_hash(req), response_hash(resp)) for req, resp in pairs]
