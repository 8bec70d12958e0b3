"""Stack commitments: request leaves, the Merkle root and the values sent to the contract (design.md "Commitments").

Both the serving node and every attester compute exactly this:

- payload hash = blake2b-256(the request body in the compact form its buyer signed, in its own key order:
  node_http.py); response hash = blake2b-256(canonical response bytes, the response's deterministic fields only);
  request leaf = blake2b-256(payload hash ‖ response hash);
- ``R`` = Merkle root over the request leaves in serving order: leaves used as they are, parent =
  blake2b-256(left ‖ right), an unpaired last node promoted unchanged, one leaf is its own root;
- ``leaf_i = blake2b-256(u8(i) ‖ R)``; ``committed_stack_proof = blake2b-256(leaf_0 ‖ … ‖ leaf_k)`` with k the
  contract's ``cross_validation_extra_nodes_count``. The selected node submits ``leaf_0``; the attester at position
  j of ``requested_attestation_nodes`` submits ``leaf_{j+1}``.

With these, the contract's final check ``blake2b256(leaves buffer) == proof`` holds when everyone is honest
(atoma-protocol.md §8.1); the historical node formula ``blake2b256(0x00 ‖ R)`` never passes it (§8.3).

``merkle_root`` / ``commit`` hash a whole history at once (attesters, replays, tools); ``MerkleFrontier`` keeps the
same root as leaves arrive, so the serving node's try-settle costs O(log N) hashes however long the stack.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from .constants import U64_MAX
from .node_http import compact_json

HASH_LEN = 32


def blake2b256(data: bytes) -> bytes:
    """``sui::hash::blake2b256``: unkeyed BLAKE2b with a 32-byte digest."""
    return hashlib.blake2b(data, digest_size=HASH_LEN).digest()


def canonical_json(value: Any) -> bytes:
    """Sorted keys, no spaces, UTF-8: one byte string per JSON value, whoever serialises it."""
    # NaN/Infinity are not JSON: refuse them rather than hash bytes no other JSON library would produce.
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def canonical_request(request: dict) -> bytes:
    """The request body as the buyer signed it: compact JSON in the body's own key order, as the Atoma node
    re-serialises it (``node_http.compact_json``). Every field counts, and so does the order of the keys: the
    payload hash is the hash under the buyer's ``X-Signature``, so a history proves what its owner asked for."""
    return compact_json(request)


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


def _commitment(root: bytes, num_leaves: int, extra_nodes_count: int, position: int) -> Commitment:
    if not 0 <= position <= extra_nodes_count:
        raise ValueError(f"position {position} is outside 0..{extra_nodes_count}")
    return Commitment(
        root=root,
        committed_stack_proof=committed_stack_proof(root, extra_nodes_count),
        stack_merkle_leaf=stack_leaf(position, root),
        position=position,
        num_leaves=num_leaves,
    )


def commit(leaves: Sequence[bytes], extra_nodes_count: int, position: int = 0) -> Commitment:
    """The commitment of a history's request leaves, for the node at ``position`` (0 = selected node)."""
    if not 0 <= position <= extra_nodes_count:
        raise ValueError(f"position {position} is outside 0..{extra_nodes_count}")
    return _commitment(merkle_root(leaves), len(leaves), extra_nodes_count, position)


def leaves_of(pairs: Iterable[tuple[dict, dict]]) -> list[bytes]:
    """Request leaves of (request, response) pairs in serving order."""
    return [request_leaf(payload_hash(req), response_hash(resp)) for req, resp in pairs]


_COUNT = struct.Struct(">Q")
_MAX_LEAVES = U64_MAX


class MerkleFrontier:
    """The Merkle root of a history kept as it grows: fold each request leaf in as it is stored, and try-settle
    costs O(log N) hashes instead of re-hashing all N leaves (design.md "Serving": commitments as you go).

    A history of N leaves splits into perfect subtrees, one per set bit of N, biggest first (N = 13 = 8 + 4 + 1:
    leaves 0–7, 8–11, 12). The frontier keeps only their roots — ``popcount(N)`` ≤ 64 hashes. Folding a leaf is a
    binary increment: the new leaf merges with the smallest subtree while one of the same size exists
    (``H(older ‖ newer)``), one hash per trailing 1 bit of N, on average one hash per leaf.

    Why :meth:`root` equals :func:`merkle_root` with its promotion rule: in the level-by-level tree, the first
    ``2^a`` leaves (a = the highest bit of N) pair only among themselves at every level up to ``a`` (their block
    boundary is even at each of those levels), and the remaining ``N − 2^a < 2^a`` leaves reduce on their own to one
    node that is promoted unchanged until the left block is one node too; so ``root(N) = H(P_a ‖ root(rest))``.
    Unrolled, that is the frontier combined from the smallest subtree up: ``acc = smallest;
    acc = H(bigger ‖ acc)`` for each bigger one. (Checked by hand for N = 1..8 and against :func:`merkle_root`
    in tests/protocol/test_commitments.py.)

    Immutable: :meth:`fold` returns a new frontier, so a store can fold, write the new frontier and the leaf in
    one transaction, and keep nothing half-updated in memory if that transaction rolls back. :meth:`to_bytes` is
    the compact form it persists: N as a big-endian u64, then the subtree roots biggest first (8 + 32 × popcount(N)
    bytes; 8 bytes for an empty history).
    """

    __slots__ = ("_count", "_nodes")

    def __init__(self, count: int = 0, nodes: Sequence[bytes] = ()) -> None:
        """A frontier from its parts (as :meth:`count` and :meth:`nodes` give them back).

        Raises:
            ValueError: a negative or > u64 count, a number of nodes other than popcount(count), or a node that is
                not 32 bytes.
        """
        if not isinstance(count, int) or isinstance(count, bool) or not 0 <= count <= _MAX_LEAVES:
            raise ValueError(f"a frontier's leaf count must be an integer in [0, 2^64 - 1], got {count!r}")
        nodes = tuple(bytes(n) for n in nodes)
        if len(nodes) != count.bit_count():
            raise ValueError(
                f"a frontier of {count} leaves has {count.bit_count()} subtree roots, got {len(nodes)}"
            )
        for node in nodes:
            if len(node) != HASH_LEN:
                raise ValueError(f"a subtree root must be {HASH_LEN} bytes, got {len(node)}")
        self._count = count
        self._nodes = nodes

    @classmethod
    def from_leaves(cls, leaves: Iterable[bytes]) -> "MerkleFrontier":
        """The frontier of a whole history (e.g. to start keeping one beside a store written before frontiers)."""
        return cls().extend(leaves)

    # ------------------------------------------------------------------------------------------- folding
    @property
    def count(self) -> int:
        """Leaves folded so far (N)."""
        return self._count

    @property
    def nodes(self) -> tuple[bytes, ...]:
        """The perfect subtrees' roots, biggest (oldest leaves) first."""
        return self._nodes

    def __len__(self) -> int:
        return self._count

    def subtrees(self) -> list[tuple[int, bytes]]:
        """``(height, root)`` of each perfect subtree, biggest first: a subtree of height h covers 2^h leaves."""
        heights = [h for h in range(self._count.bit_length() - 1, -1, -1) if self._count >> h & 1]
        return list(zip(heights, self._nodes))

    def fold(self, leaf: bytes) -> "MerkleFrontier":
        """This frontier with ``leaf`` appended as leaf number N (0-based).

        Raises:
            ValueError: the leaf is not 32 bytes, or the history already has 2^64 − 1 leaves.
        """
        if len(leaf) != HASH_LEN:
            raise ValueError(f"a leaf must be {HASH_LEN} bytes, got {len(leaf)}")
        n = self._count
        if n >= _MAX_LEAVES:
            raise ValueError("a frontier holds at most 2^64 - 1 leaves")
        node = leaf if type(leaf) is bytes else bytes(leaf)
        nodes = self._nodes
        if n & 1:  # one merge per trailing 1 bit of N: equal-sized subtrees combine, the smallest first
            blake2b = hashlib.blake2b
            keep, m = len(nodes), n
            while m & 1:
                keep -= 1
                node = blake2b(nodes[keep] + node, digest_size=HASH_LEN).digest()  # older on the left
                m >>= 1
            nodes = nodes[:keep]
        out = object.__new__(MerkleFrontier)
        out._count = n + 1
        out._nodes = nodes + (node,)
        return out

    def extend(self, leaves: Iterable[bytes]) -> "MerkleFrontier":
        """This frontier with ``leaves`` folded in order (one list kept mutable while folding: no copy per leaf)."""
        n = self._count
        nodes = list(self._nodes)
        blake2b = hashlib.blake2b
        for leaf in leaves:
            if len(leaf) != HASH_LEN:
                raise ValueError(f"a leaf must be {HASH_LEN} bytes, got {len(leaf)}")
            node, m = bytes(leaf), n
            while m & 1:
                node = blake2b(nodes.pop() + node, digest_size=HASH_LEN).digest()
                m >>= 1
            nodes.append(node)
            n += 1
        if n > _MAX_LEAVES:
            raise ValueError("a frontier holds at most 2^64 - 1 leaves")
        out = object.__new__(MerkleFrontier)
        out._count = n
        out._nodes = tuple(nodes)
        return out

    # ------------------------------------------------------------------------------------------- commitment
    def root(self) -> bytes:
        """``merkle_root`` of the leaves folded so far, in ``popcount(N) − 1`` hashes.

        Raises:
            ValueError: no leaves folded (an empty stack has nothing to commit to).
        """
        if not self._count:
            raise ValueError("cannot commit to an empty history")
        nodes = self._nodes
        acc = nodes[-1]
        for node in reversed(nodes[:-1]):  # smallest subtree up: acc = H(bigger ‖ acc)
            acc = hashlib.blake2b(node + acc, digest_size=HASH_LEN).digest()
        return acc

    def commit(self, extra_nodes_count: int, position: int = 0) -> Commitment:
        """Equal to ``commit(leaves, extra_nodes_count, position)`` over the leaves folded so far."""
        return _commitment(self.root(), self._count, extra_nodes_count, position)

    # ------------------------------------------------------------------------------------------- persistence
    def to_bytes(self) -> bytes:
        """N as a big-endian u64, then the subtree roots biggest first: 8 + 32 × popcount(N) bytes."""
        return _COUNT.pack(self._count) + b"".join(self._nodes)

    @classmethod
    def from_bytes(cls, data: bytes) -> "MerkleFrontier":
        """The frontier :meth:`to_bytes` wrote.

        Raises:
            ValueError: shorter than 8 bytes, or a length other than 8 + 32 × popcount(N).
        """
        if type(data) is not bytes:
            data = bytes(data)
        size = len(data)
        if size < _COUNT.size:
            raise ValueError(f"a serialised frontier has at least {_COUNT.size} bytes, got {size}")
        count = int.from_bytes(data[: _COUNT.size], "big")
        want = _COUNT.size + HASH_LEN * count.bit_count()
        if size != want:
            raise ValueError(f"a serialised frontier of {count} leaves has {want} bytes, got {size}")
        out = object.__new__(cls)
        out._count = count
        out._nodes = tuple([data[i : i + HASH_LEN] for i in range(_COUNT.size, size, HASH_LEN)])
        return out

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MerkleFrontier):
            return NotImplemented
        return self._count == other._count and self._nodes == other._nodes

    def __hash__(self) -> int:
        return hash((self._count, self._nodes))

    def __repr__(self) -> str:
        return f"MerkleFrontier(count={self._count}, subtrees={[(h, n.hex()[:8]) for h, n in self.subtrees()]})"
