"""Move type strings: the one normal form (every address padded to 32 bytes) and their BCS ``TypeTag``, which Sui
hashes into dynamic field ids. Used by the Sui adapter, its table reads, and the loopback node."""

from __future__ import annotations

import re

from ...wallet import normalize_address
from .bcs import uleb128

__all__ = ["address_bytes", "canonical_type", "type_tag_bcs"]

_ADDRESS_IN_TYPE = re.compile(r"0[xX][0-9a-fA-F]+(?=::)")


def canonical_type(type_str: str) -> str:
    """A Move type with every address padded to 32 bytes (``0x2::coin::Coin<0xa::usdc::USDC>`` → long form), so
    two spellings of one type compare equal."""
    return _ADDRESS_IN_TYPE.sub(lambda m: normalize_address(m.group(0)), (type_str or "").strip())


_TOKEN = re.compile(r"\s*(::|<|>|,|[A-Za-z_0-9]+)")
# TypeTag variant indices (move_core_types::language_storage::TypeTag).
_PRIMITIVE_TAGS = {
    "bool": 0, "u8": 1, "u64": 2, "u128": 3, "address": 4, "signer": 5, "u16": 8, "u32": 9, "u256": 10,
}
_VECTOR_TAG, _STRUCT_TAG = 6, 7




def address_bytes(text: str) -> bytes:
    """The 32 bytes of a Sui address (``0x2`` → 31 zero bytes then 2); ValueError if it is not one."""
    return bytes.fromhex(normalize_address(text)[2:])


def _tokens(type_str: str) -> list[str]:
    pos, out = 0, []
    text = type_str.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise ValueError(f"cannot parse Move type {type_str!r} at {pos}")
        out.append(m.group(1))
        pos = m.end()
    return out


def _parse_type(tokens: list[str], i: int) -> tuple[bytes, int]:
    """BCS of the TypeTag starting at ``tokens[i]``; returns (bytes, next index)."""
    if i >= len(tokens):
        raise ValueError("unexpected end of Move type")
    tok = tokens[i]
    if tok in _PRIMITIVE_TAGS:
        return bytes([_PRIMITIVE_TAGS[tok]]), i + 1
    if tok == "vector":
        if tokens[i + 1 : i + 2] != ["<"]:
            raise ValueError("vector needs a type parameter")
        inner, j = _parse_type(tokens, i + 2)
        if tokens[j : j + 1] != [">"]:
            raise ValueError("unclosed vector<")
        return bytes([_VECTOR_TAG]) + inner, j + 1
    # address::module::Name<T, ...>
    if tokens[i + 1 : i + 2] != ["::"] or tokens[i + 3 : i + 4] != ["::"] or len(tokens) < i + 5:
        raise ValueError(f"expected address::module::Name, got {' '.join(tokens[i:i + 5])!r}")
    address, module, name = tokens[i], tokens[i + 2], tokens[i + 4]
    j = i + 5
    params: list[bytes] = []
    if tokens[j : j + 1] == ["<"]:
        j += 1
        while True:
            param, j = _parse_type(tokens, j)
            params.append(param)
            if tokens[j : j + 1] == [","]:
                j += 1
                continue
            if tokens[j : j + 1] == [">"]:
                j += 1
                break
            raise ValueError("unclosed type parameter list")
    for ident in (module, name):
        if not re.fullmatch(r"[A-Za-z_][A-Za-z_0-9]*", ident):
            raise ValueError(f"not a Move identifier: {ident!r}")
    body = (
        address_bytes(address)
        + uleb128(len(module)) + module.encode()
        + uleb128(len(name)) + name.encode()
        + uleb128(len(params)) + b"".join(params)
    )
    return bytes([_STRUCT_TAG]) + body, j


def type_tag_bcs(type_str: str) -> bytes:
    """BCS of a Move ``TypeTag`` written as a string (``u64``, ``vector<u8>``, ``0x2::m::S<0xa::n::T>``)."""
    tokens = _tokens(type_str)
    out, end = _parse_type(tokens, 0)
    if end != len(tokens):
        raise ValueError(f"trailing tokens in Move type {type_str!r}")
    return out
