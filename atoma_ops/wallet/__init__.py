"""A Sui wallet that reads and writes Sui's own files (``client.yaml``, ``sui.keystore``, ``sui.aliases``), in three
parts: :mod:`.keys` (key crypto: keypairs, addresses, signatures; no files), :mod:`.files` (Sui's file formats and
atomic writes) and :mod:`.wallet` (:class:`Wallet`, which holds the keys of those files).

Key material is kept in a private attribute of :class:`Wallet` and never appears in ``repr()``/``str()``, in
exception messages, or in chained exception contexts.
"""

from .errors import (
    InvalidSignatureError,
    KeystoreError,
    MalformedSignatureError,
    UnknownAddressError,
    WalletError,
)
from .files import ALIASES_FILE, CLIENT_YAML, KEYSTORE_FILE
from .keys import (
    SuiKeyPair,
    address_from_public_key,
    create_new_keypair,
    keypair_from_keystring,
    normalize_address,
    parse_signature,
    verify_hash_signature,
    verify_signature,
)
from .wallet import Account, Wallet

__all__ = [
    "ALIASES_FILE",
    "Account",
    "CLIENT_YAML",
    "InvalidSignatureError",
    "KEYSTORE_FILE",
    "KeystoreError",
    "MalformedSignatureError",
    "SuiKeyPair",
    "UnknownAddressError",
    "Wallet",
    "WalletError",
    "address_from_public_key",
    "create_new_keypair",
    "keypair_from_keystring",
    "normalize_address",
    "parse_signature",
    "verify_hash_signature",
    "verify_signature",
]
