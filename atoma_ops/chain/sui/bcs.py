"""BCS's variable-length integer (ULEB128), both ways: the one encoder and the one reader every BCS value in this
project uses for lengths (transaction building, dynamic-field ids, the loopback node's object contents)."""

from __future__ import annotations

__all__ = ["Reader", "uleb128"]


def uleb128(n: int) -> bytes:
    """ULEB128 of a non-negative int (BCS lengths and enum tags)."""
    if n < 0:
        raise ValueError(f"ULEB128 of a negative number {n}")
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


class Reader:
    """Reads BCS bytes front to back; ValueError on a short read or a length prefix BCS does not allow."""

    def __init__(self, data: bytes):
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise ValueError("unexpected end of bytes")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def uleb128(self) -> int:
        """A canonical ULEB128 length (at most 2**31 - 1, as BCS requires)."""
        value, shift = 0, 0
        while True:
            byte = self.take(1)[0]
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                break
            shift += 7
            if shift > 28:
                raise ValueError("length prefix too long")
        if byte == 0 and shift:
            raise ValueError("non-canonical length prefix")
        if value > 2**31 - 1:
            raise ValueError("length out of range")
        return value
