"""Sui's transaction digest, the one hash both chain adapters name transactions by (the localnet hashes its JSON
transactions with it, the Sui adapter its BCS ``TransactionData``), so a digest means the same on either path."""

from __future__ import annotations

import functools
import hashlib

import base58

__all__ = ["transaction_digest"]


def transaction_digest(tx_bytes: bytes) -> str:
    """Sui's transaction digest: base58 of blake2b-256 over ``b"TransactionData::" ‖ tx_bytes``."""
    return _digest(bytes(tx_bytes))


@functools.lru_cache(maxsize=256)  # prepare and execute hash the same bytes; base58 is slow pure Python
def _digest(tx_bytes: bytes) -> str:
    return base58.b58encode(hashlib.blake2b(b"TransactionData::" + tx_bytes, digest_size=32).digest()).decode()
