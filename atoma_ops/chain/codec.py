"""Encode call arguments for a transaction, checking each against its Move type.

A value that the type cannot hold (negative, past u64, non-ASCII string, odd hex) is refused here, before anything
is signed, the way BCS serialization refuses it on a real Sui client.
"""

from __future__ import annotations

from typing import Any

from ..protocol import abi
from ..protocol.constants import U8_MAX, U16_MAX, U64_MAX
from .errors import InvalidArgument

_INT_MAX = {abi.U8: U8_MAX, abi.U16: U16_MAX, abi.U64: U64_MAX}


def _int(name: str, type_: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise InvalidArgument(f"{name}: expected {type_}, got {type(value).__name__}")
    try:
        n = int(value)
    except ValueError:
        raise InvalidArgument(f"{name}: {value!r} is not an integer") from None
    if n < 0 or n > _INT_MAX[type_]:
        raise InvalidArgument(f"{name}: {n} does not fit {type_} (0..{_INT_MAX[type_]})")
    return n


def _bytes(name: str, value: Any) -> bytes:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str):
        text = value[2:] if value.startswith(("0x", "0X")) else value
        try:
            return bytes.fromhex(text)
        except ValueError:
            raise InvalidArgument(f"{name}: {value!r} is not hex bytes") from None
    if isinstance(value, list):
        return bytes(_int(name, abi.U8, v) for v in value)
    raise InvalidArgument(f"{name}: expected bytes, got {type(value).__name__}")


def check_value(name: str, type_: str, value: Any) -> Any:
    """Validate ``value`` for ``type_`` and return it in its Python form (int, bool, str, bytes, list, None)."""
    if type_ in _INT_MAX:
        return _int(name, type_, value)
    if type_ == abi.BOOL:
        if not isinstance(value, bool):
            raise InvalidArgument(f"{name}: expected bool, got {value!r}")
        return value
    if type_ in (abi.OPTION_U8, abi.OPTION_U16):
        return None if value is None else _int(name, type_[7:-1], value)
    if type_ == abi.OPTION_STRING:
        if value is None:
            return None
        if not isinstance(value, str) or not value.isascii():
            raise InvalidArgument(f"{name}: expected an ASCII string, got {value!r}")
        return value
    if type_ == abi.VECTOR_U8:
        return _bytes(name, value)
    if type_ == abi.VECTOR_U64:
        if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
            raise InvalidArgument(f"{name}: expected a list of u64")
        return [_int(name, abi.U64, v) for v in value]
    raise InvalidArgument(f"{name}: unsupported type {type_}")


def to_wire(type_: str, value: Any) -> Any:
    """Python value -> canonical JSON value in transaction bytes (u64 as decimal strings, bytes as hex)."""
    if type_ == abi.U64:
        return str(value)
    if type_ == abi.VECTOR_U64:
        return [str(v) for v in value]
    if type_ == abi.VECTOR_U8:
        return "0x" + value.hex()
    return value


def from_wire(name: str, type_: str, value: Any) -> Any:
    return check_value(name, type_, value)
