"""The wallet's errors. Their messages never contain key material.
"""

from __future__ import annotations


class WalletError(Exception):
    """Base class of wallet errors. Messages never contain key material."""


class KeystoreError(WalletError):
    """``client.yaml``, the keystore or the aliases file is missing or malformed."""


class UnknownAddressError(WalletError):
    """An alias or address is not in this wallet."""


class InvalidSignatureError(WalletError):
    """A Sui serialized signature is malformed or does not verify."""


class MalformedSignatureError(InvalidSignatureError):
    """A Sui serialized signature that cannot even be read: bad base64, an unsupported scheme flag, a length that is
    not its scheme's, a public key that is not a point of its curve (the Atoma node answers these with 400, a
    readable signature that does not verify with 401)."""
