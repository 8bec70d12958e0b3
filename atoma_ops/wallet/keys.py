"""Key crypto, no files: keypairs held in memory, Sui addresses from public keys, signing under Sui's intent and
verifying signatures. Delegated to pysui's crypto library ``pysui_fastcrypto`` (what ``pysui.sui.sui_crypto``
wraps), called directly: importing ``pysui`` itself loads its whole client stack (about half a second), too slow
for a CLI that signs one transaction and exits.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from typing import Any

import pysui_fastcrypto as _pfc

from .errors import InvalidSignatureError, MalformedSignatureError

# Public key length per signature scheme flag (Sui: 0 ed25519, 1 secp256k1, 2 secp256r1).
_PUBLIC_KEY_LEN = {0: 32, 1: 33, 2: 33}
_PRIVATE_KEY_LEN = 32
_SIGNATURE_LEN = 64
_BECH32_PREFIX = "suiprivkey"
# Intent for transaction data: scope TransactionData (0), version V0 (0), app Sui (0).
_TX_INTENT = bytes([0, 0, 0])
# Sui's own rule for aliases (sui-keys): a letter first, then letters, digits, '-' or '_'.
_ALIAS_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")
_HEX_RE = re.compile(r"^[0-9a-fA-F]+$")
_ED25519 = 0
_ED25519_DERIVATION_PATH = "m/44'/784'/0'/0'/0'"



class SuiKeyPair:
    """A keypair held in memory only; the same operations as pysui's ``SuiKeyPair`` that the wallet needs."""

    __slots__ = ("scheme", "public_key_bytes", "_private")

    def __init__(self, scheme: int, public_key: bytes, private_key: bytes):
        self.scheme = scheme
        self.public_key_bytes = public_key
        self._private = private_key

    def serialize(self) -> str:
        """Sui keystore entry: base64 of ``flag ‖ private key``."""
        return base64.b64encode(bytes([self.scheme]) + self._private).decode()

    def new_sign_secure(self, tx_b64: str) -> str:
        """Sign under the transaction intent; base64 of ``flag ‖ signature ‖ public key``."""
        return base64.b64encode(bytes(_pfc.sign_digest(self.scheme, self._private, tx_b64, [0, 0, 0]))).decode()

    def sign_raw(self, message: bytes) -> str:
        """Sign ``message`` as it is (no intent, no hash: fastcrypto's own per-scheme signing, sha256 inside for
        the secp curves as on Sui); base64 of ``flag ‖ signature ‖ public key``."""
        sig = base64.b64decode(_pfc.sign_message(self.scheme, self._private, base64.b64encode(message).decode()))
        return base64.b64encode(bytes([self.scheme]) + sig + self.public_key_bytes).decode()

    def __repr__(self) -> str:
        return f"SuiKeyPair(scheme={self.scheme}, private=<hidden>)"

    def __reduce__(self) -> Any:
        raise TypeError("a keypair cannot be pickled")


def create_new_keypair() -> SuiKeyPair:
    """A fresh ed25519 key from a new 12-word mnemonic (Sui's default derivation path)."""
    _phrase, pub, prv = _pfc.generate_new_keypair(_ED25519, _ED25519_DERIVATION_PATH, "12")
    return SuiKeyPair(_ED25519, bytes(pub), bytes(prv))


def keypair_from_keystring(entry: str) -> SuiKeyPair:
    """Parse a base64 ``flag ‖ private key`` or bech32 ``suiprivkey…`` keystore entry."""
    if entry.startswith(_BECH32_PREFIX):
        scheme, pub, prv = _pfc.decode_bech32(entry, _BECH32_PREFIX)
        if scheme == 255:
            raise ValueError("invalid bech32 key")
    else:
        scheme, pub, prv = _pfc.keys_from_keystring(entry)
    return SuiKeyPair(int(scheme), bytes(pub), bytes(prv))



def normalize_address(text: str) -> str:
    """Return the canonical form of a Sui address: ``0x`` followed by 64 lowercase hex digits.

    Shorter hex is left-padded with zeros, as Sui does (``0x2`` is the framework address).

    Args:
        text: Hex address, with or without a ``0x`` prefix, any case.

    Returns:
        The normalized address.

    Raises:
        ValueError: If ``text`` is not hex, is empty, or is longer than 32 bytes.
    """
    if not isinstance(text, str):
        raise ValueError(f"address must be a string, got {type(text).__name__}")
    body = text.strip()
    if body[:2] in ("0x", "0X"):
        body = body[2:]
    if not body or not _HEX_RE.fullmatch(body):
        raise ValueError(f"not a hex Sui address: {text!r}")
    if len(body) > 64:
        raise ValueError(f"Sui address longer than 32 bytes: {text!r}")
    return "0x" + body.lower().rjust(64, "0")


def address_from_public_key(scheme_flag: int, public_key: bytes) -> str:
    """Derive the Sui address of a public key: ``0x`` + hex(blake2b-256(flag ‖ public key)).

    Args:
        scheme_flag: 0 (ed25519), 1 (secp256k1) or 2 (secp256r1).
        public_key: The raw public key (32 bytes for ed25519, 33 compressed bytes for secp).

    Returns:
        The normalized address.

    Raises:
        ValueError: On an unsupported flag or a public key of the wrong length.
    """
    expected = _PUBLIC_KEY_LEN.get(scheme_flag)
    if expected is None:
        raise ValueError(f"unsupported signature scheme flag {scheme_flag}")
    if len(public_key) != expected:
        raise ValueError(f"public key for scheme {scheme_flag} must be {expected} bytes, got {len(public_key)}")
    digest = hashlib.blake2b(bytes([scheme_flag]) + bytes(public_key), digest_size=32).digest()
    return "0x" + digest.hex()


def verify_signature(tx_bytes: bytes, signature_b64: str) -> str:
    """Verify a Sui serialized signature over transaction bytes and return the signer's address.

    The signature is ``base64(flag ‖ 64-byte signature ‖ public key)`` over
    ``blake2b-256([0, 0, 0] ‖ tx_bytes)`` (the transaction-data intent), as produced by :meth:`Wallet.sign`.

    Args:
        tx_bytes: BCS transaction data bytes that were signed.
        signature_b64: The serialized signature, base64.

    Returns:
        The signer's address, derived from the embedded public key.

    Raises:
        InvalidSignatureError: On any malformation (bad base64, unknown flag, wrong length) or a signature that
            does not verify.
    """
    if not isinstance(tx_bytes, (bytes, bytearray, memoryview)):
        raise InvalidSignatureError("transaction bytes must be bytes")
    return verify_hash_signature(hashlib.blake2b(_TX_INTENT + bytes(tx_bytes), digest_size=32).digest(), signature_b64)


def parse_signature(signature_b64: str) -> tuple[int, bytes, bytes]:
    """``(scheme flag, 64-byte signature, public key)`` of a Sui serialized signature (ed25519, secp256k1 or
    secp256r1).

    Raises:
        MalformedSignatureError: bad base64, an unsupported flag (multisig, zkLogin, passkey…) or a wrong length.
    """
    if not isinstance(signature_b64, str):
        raise MalformedSignatureError("signature must be a base64 string")
    try:
        raw = base64.b64decode(signature_b64, validate=True)
    except (binascii.Error, ValueError):
        raise MalformedSignatureError("signature is not valid base64") from None
    if not raw:
        raise MalformedSignatureError("signature is empty")
    flag = raw[0]
    pub_len = _PUBLIC_KEY_LEN.get(flag)
    if pub_len is None:
        # Multisig, zkLogin and passkey signatures have other layouts; they are not produced by this wallet.
        raise MalformedSignatureError(f"unsupported signature scheme flag {flag}")
    if len(raw) != 1 + _SIGNATURE_LEN + pub_len:
        raise MalformedSignatureError(
            f"signature for scheme {flag} must be {1 + _SIGNATURE_LEN + pub_len} bytes, got {len(raw)}"
        )
    return flag, raw[1 : 1 + _SIGNATURE_LEN], raw[1 + _SIGNATURE_LEN :]


def verify_hash_signature(digest: bytes, signature_b64: str) -> str:
    """Verify a Sui serialized signature over a 32-byte digest signed as it is (no intent prefix: how the Atoma
    node's requests and responses are signed, and what a transaction signature signs after its intent hash) and
    return the signer's address.

    Raises:
        MalformedSignatureError: the signature cannot be read (see :func:`parse_signature`), or its public key is
            not a point of its curve.
        InvalidSignatureError: it does not verify over ``digest``.
    """
    flag, sig, pub = parse_signature(signature_b64)
    if flag != _ED25519:
        try:  # a compressed point must start with 02 or 03 (fastcrypto would raise on it below)
            if pub[0] not in (2, 3):
                raise ValueError
        except (IndexError, ValueError):
            raise MalformedSignatureError(f"the public key is not a compressed point of scheme {flag}") from None
    try:
        ok = _pfc.verify_pubk(
            flag, list(pub), base64.b64encode(bytes(digest)).decode(), base64.b64encode(sig).decode()
        )
    except Exception:  # fastcrypto raises on e.g. a public key that is not a curve point
        raise MalformedSignatureError("signature does not verify (malformed public key or signature)") from None
    if ok is not True:
        raise InvalidSignatureError("signature does not verify")
    return address_from_public_key(flag, pub)
