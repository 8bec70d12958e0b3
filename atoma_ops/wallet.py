"""A Sui wallet that reads and writes Sui's own files (``client.yaml``, ``sui.keystore``, ``sui.aliases``).

The files stay interchangeable with the ``sui`` CLI: a wallet made here can be used by ``sui client`` and the
reverse. Key generation, keystring parsing, signing and verification are delegated to pysui's crypto library
``pysui_fastcrypto`` (what ``pysui.sui.sui_crypto`` wraps), called directly: importing ``pysui`` itself loads its
whole client stack (about half a second), too slow for a CLI that signs one transaction and exits.

Key material is kept in a private attribute of :class:`Wallet` and never appears in ``repr()``/``str()``, in
exception messages, or in chained exception contexts (errors raised while parsing keys use ``from None`` because
the underlying library's messages may echo the input).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pysui_fastcrypto as _pfc
import yaml

__all__ = [
    "Account",
    "InvalidSignatureError",
    "KeystoreError",
    "MalformedSignatureError",
    "UnknownAddressError",
    "Wallet",
    "WalletError",
    "address_from_public_key",
    "normalize_address",
    "verify_hash_signature",
    "verify_signature",
]

CLIENT_YAML = "client.yaml"
KEYSTORE_FILE = "sui.keystore"
ALIASES_FILE = "sui.aliases"

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


@dataclass(frozen=True)
class Account:
    """One key of a wallet, public parts only.

    Attributes:
        address: Normalized Sui address.
        alias: The alias from ``sui.aliases``, or None if the key has none.
        scheme: Signature scheme flag (0 ed25519, 1 secp256k1, 2 secp256r1).
        public_key: Raw public key bytes (never private key material).
    """

    address: str
    alias: str | None
    scheme: int
    public_key: bytes


def _check_alias(alias: Any) -> str:
    """Return ``alias`` if it follows Sui's alias rule, else raise WalletError."""
    if not isinstance(alias, str) or not _ALIAS_RE.fullmatch(alias):
        raise WalletError(
            f"invalid alias {alias!r}: must start with a letter and contain only letters, digits, '-' or '_'"
        )
    return alias


def _atomic_write(path: Path, data: bytes, mode: int, *, restrict: bool = False) -> None:
    """Write ``data`` to ``path`` atomically: temp file in the same folder, fsync, ``os.replace``.

    The temp file is created with ``mode`` by ``os.open`` so it is never wider than that, even briefly. With
    ``restrict`` the mode is also forced with ``fchmod`` (umask can only narrow it; this keeps it exact).
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), mode)
    try:
        try:
            if restrict:
                os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    # Make the rename itself durable; not possible on every platform/filesystem, so best effort.
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def _read_text(path: Path, what: str) -> str:
    """Read a wallet file, turning OS errors into KeystoreError naming the file."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise KeystoreError(f"{what} not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise KeystoreError(f"cannot read {what} {path}: {type(exc).__name__}") from None


def _read_json_list(path: Path, what: str) -> list[Any]:
    """Parse a JSON array file; errors name the file and position but never quote its content."""
    text = _read_text(path, what)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise KeystoreError(f"{what} {path} is not valid JSON (line {exc.lineno}, column {exc.colno})") from None
    if not isinstance(data, list):
        raise KeystoreError(f"{what} {path} must be a JSON array, got {type(data).__name__}")
    return data


def _parse_key_entry(entry: Any, index: int, path: Path) -> SuiKeyPair:
    """Parse one keystore entry (base64 ``flag ‖ private key`` or bech32 ``suiprivkey…``).

    Error messages give the entry's position only: the entry text is a private key.
    """
    where = f"keystore {path}: entry {index}"
    if not isinstance(entry, str):
        raise KeystoreError(f"{where} is not a string ({type(entry).__name__})")
    if entry.startswith(_BECH32_PREFIX):
        try:
            kp = keypair_from_keystring(entry)
        except Exception:
            raise KeystoreError(f"{where} is not a valid bech32 '{_BECH32_PREFIX}' key") from None
    else:
        # Check the shape ourselves so the error says what is wrong without echoing the entry.
        try:
            raw = base64.b64decode(entry, validate=True)
        except (binascii.Error, ValueError):
            raise KeystoreError(f"{where} is not valid base64") from None
        if len(raw) != 1 + _PRIVATE_KEY_LEN:
            raise KeystoreError(
                f"{where} decodes to {len(raw)} bytes, expected {1 + _PRIVATE_KEY_LEN} (flag + private key)"
            )
        if raw[0] not in _PUBLIC_KEY_LEN:
            raise KeystoreError(f"{where} has unsupported signature scheme flag {raw[0]}")
        del raw
        try:
            kp = keypair_from_keystring(entry)
        except Exception:
            raise KeystoreError(f"{where} is not a valid private key for its scheme") from None
    return kp


def _check_aliases_held(keypairs: list[SuiKeyPair], aliases: dict[str, str], keystore: Path, aliases_path: Path) -> None:
    """An alias whose key the keystore does not hold, while an entry holds a key no alias names: that entry is
    damaged (a changed byte still decodes to *a* key, of another address). Sui writes the aliases in keystore
    order, so the alias's position names the entry. (An alias of a key that is simply absent, with every entry
    named, is ignored, as Sui does.)"""
    addresses = [address_from_public_key(int(kp.scheme), kp.public_key_bytes) for kp in keypairs]
    named = set(aliases.values())
    unnamed = [i for i, a in enumerate(addresses) if a not in named]
    if not unnamed:
        return
    for position, (alias, address) in enumerate(aliases.items()):
        if address in addresses:
            continue
        entry = position if position in unnamed else unnamed[0] if len(unnamed) == 1 else None
        which = f"entry {entry}" if entry is not None else "an entry"
        raise KeystoreError(
            f"keystore {keystore}: {which} is damaged: it no longer holds the key of alias {alias!r} "
            f"(named in {aliases_path}); restore the keystore from a backup"
        )


def _client_dir_path(client_yaml: Path, value: str) -> Path:
    """Resolve a path from client.yaml: absolute as is, relative to the client.yaml's folder."""
    p = Path(os.path.expanduser(value))
    return p if p.is_absolute() else client_yaml.parent / p


class Wallet:
    """A Sui file-based wallet (``client.yaml`` + ``sui.keystore`` + ``sui.aliases``).

    Attributes:
        client_yaml: Path of ``client.yaml``.
        keystore_path: Path of the keystore file named by ``client.yaml``.
        aliases_path: Path of the aliases file (beside the keystore, same stem, ``.aliases``).
        active_address: The active address (``client.yaml``'s, else the first key's).
        active_env: The active environment alias, or None.
        envs: Environments from ``client.yaml`` (dicts with ``alias``, ``rpc``, ``ws``, ``basic_auth``…).
    """

    client_yaml: Path
    keystore_path: Path
    aliases_path: Path
    active_address: str
    active_env: str | None
    envs: list[dict]

    def __init__(
        self,
        *,
        client_yaml: Path,
        keystore_path: Path,
        aliases_path: Path,
        config: dict[str, Any],
        keypairs: list[SuiKeyPair],
        aliases: dict[str, str],
        active_address: str,
    ) -> None:
        """Build a wallet from parsed parts; use :meth:`load` or :meth:`create` instead."""
        self.client_yaml = client_yaml
        self.keystore_path = keystore_path
        self.aliases_path = aliases_path
        self._config = config  # raw client.yaml mapping, kept so rewrites preserve unknown keys
        self.envs = list(config.get("envs") or [])
        self.active_env = config.get("active_env")
        self.active_address = active_address
        # Private: address -> keypair (insertion order = keystore order). Never exposed or printed.
        self.__keypairs: dict[str, SuiKeyPair] = {}
        self._accounts: list[Account] = []
        self._alias_by_address: dict[str, str] = {}
        self._address_by_alias: dict[str, str] = {}
        for kp in keypairs:
            self._add(kp, None)
        for alias, address in aliases.items():
            if address in self.__keypairs and address not in self._alias_by_address:
                self._alias_by_address[address] = alias
                self._address_by_alias[alias] = address
        self._accounts = [
            Account(a.address, self._alias_by_address.get(a.address), a.scheme, a.public_key) for a in self._accounts
        ]

    def _add(self, kp: SuiKeyPair, alias: str | None) -> Account | None:
        """Register a keypair; a key already present (duplicate keystore entry) is skipped, as Sui does."""
        scheme = int(kp.scheme)
        pub = kp.public_key_bytes
        address = address_from_public_key(scheme, pub)
        if address in self.__keypairs:
            return None
        self.__keypairs[address] = kp
        account = Account(address=address, alias=alias, scheme=scheme, public_key=pub)
        self._accounts.append(account)
        if alias is not None:
            self._alias_by_address[address] = alias
            self._address_by_alias[alias] = address
        return account

    # -- construction ---------------------------------------------------------------------------------------

    @classmethod
    def load(cls, client_yaml: str | os.PathLike) -> Wallet:
        """Load a wallet from a Sui ``client.yaml`` and the keystore and aliases it points to.

        A keystore with permissions wider than 0600 still loads (as with the ``sui`` CLI). A missing aliases file
        is accepted: the keys then have no alias.

        Args:
            client_yaml: Path of ``client.yaml``.

        Returns:
            The wallet.

        Raises:
            KeystoreError: If a file is missing or malformed; the message names the file and the problem.
        """
        path = Path(client_yaml)
        text = _read_text(path, "client config")
        try:
            config = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
            raise KeystoreError(f"client config {path} is not valid YAML{where}") from None
        if not isinstance(config, dict):
            raise KeystoreError(f"client config {path} must be a YAML mapping")

        keystore = config.get("keystore")
        if not isinstance(keystore, dict) or not isinstance(keystore.get("File"), str) or not keystore["File"]:
            raise KeystoreError(f"client config {path}: 'keystore' must be a mapping with a 'File' path")
        envs = config.get("envs")
        if envs is not None and (not isinstance(envs, list) or not all(isinstance(e, dict) for e in envs)):
            raise KeystoreError(f"client config {path}: 'envs' must be a list of mappings")
        active_env = config.get("active_env")
        if active_env is not None and not isinstance(active_env, str):
            raise KeystoreError(f"client config {path}: 'active_env' must be a string")

        keystore_path = _client_dir_path(path, keystore["File"])
        aliases_path = keystore_path.with_suffix(".aliases")

        entries = _read_json_list(keystore_path, "keystore")
        keypairs = [_parse_key_entry(entry, i, keystore_path) for i, entry in enumerate(entries)]
        del entries

        aliases: dict[str, str] = {}
        if aliases_path.exists():
            for i, item in enumerate(_read_json_list(aliases_path, "aliases file")):
                where = f"aliases file {aliases_path}: entry {i}"
                if not isinstance(item, dict):
                    raise KeystoreError(f"{where} must be an object")
                alias, pub_b64 = item.get("alias"), item.get("public_key_base64")
                if not isinstance(alias, str) or not alias:
                    raise KeystoreError(f"{where} has no 'alias' string")
                if not isinstance(pub_b64, str):
                    raise KeystoreError(f"{where} has no 'public_key_base64' string")
                try:
                    raw = base64.b64decode(pub_b64, validate=True)
                    address = address_from_public_key(raw[0], raw[1:]) if raw else ""
                except (binascii.Error, ValueError):
                    address = ""
                if not address:
                    raise KeystoreError(f"{where}: 'public_key_base64' is not base64 of flag + public key")
                if aliases.get(alias, address) != address:
                    raise KeystoreError(f"{where}: alias {alias!r} is given to two different keys")
                aliases[alias] = address
        _check_aliases_held(keypairs, aliases, keystore_path, aliases_path)

        raw_active = config.get("active_address")
        if raw_active is None:
            if not keypairs:
                raise KeystoreError(
                    f"client config {path} has no active_address and keystore {keystore_path} is empty"
                )
            active = address_from_public_key(int(keypairs[0].scheme), keypairs[0].public_key_bytes)
        else:
            # Unquoted 0x… in YAML 1.1 parses as an int; accept it rather than fail on a hand-edited file.
            is_int = isinstance(raw_active, int) and not isinstance(raw_active, bool)
            text_active = f"{raw_active:x}" if is_int else raw_active
            try:
                active = normalize_address(text_active)
            except ValueError:
                raise KeystoreError(f"client config {path}: 'active_address' is not a Sui address") from None

        return cls(
            client_yaml=path,
            keystore_path=keystore_path,
            aliases_path=aliases_path,
            config=config,
            keypairs=keypairs,
            aliases=aliases,
            active_address=active,
        )

    @classmethod
    def from_keystore_text(
        cls, keystore_text: str, *, aliases: dict[str, str] | None = None, active_address: str | None = None
    ) -> Wallet:
        """A wallet held in memory only: the keystore's JSON text (e.g. from a secret store), optional aliases
        (alias -> address) and the active address (default: the first key). Nothing is written to disk.

        Raises:
            KeystoreError: the text is not a JSON list of keys, or an alias or address is not one of its keys.
        """
        where = Path("<secret keystore>")
        try:
            entries = json.loads(keystore_text)
        except ValueError:
            raise KeystoreError("the keystore secret is not valid JSON (a list of base64 or suiprivkey keys)") from None
        if not isinstance(entries, list) or not entries:
            raise KeystoreError("the keystore secret must be a non-empty JSON list of keys")
        keypairs = [_parse_key_entry(entry, i, where) for i, entry in enumerate(entries)]
        del entries
        known = {address_from_public_key(int(k.scheme), k.public_key_bytes) for k in keypairs}
        checked: dict[str, str] = {}
        for alias, address in (aliases or {}).items():
            try:
                address = normalize_address(address)
            except ValueError:
                raise KeystoreError(f"alias {alias!r}: {address!r} is not a Sui address") from None
            if address not in known:
                raise KeystoreError(f"alias {alias!r} names {address}, which is not a key of the keystore secret")
            checked[_check_alias(alias)] = address
        active = address_from_public_key(int(keypairs[0].scheme), keypairs[0].public_key_bytes)
        if active_address:
            active = checked.get(active_address) or normalize_address(active_address)
            if active not in known:
                raise KeystoreError(f"the active address {active} is not a key of the keystore secret")
        return cls(
            client_yaml=where,
            keystore_path=where,
            aliases_path=where,
            config={},
            keypairs=keypairs,
            aliases=checked,
            active_address=active,
        )

    @classmethod
    def create(
        cls,
        directory: str | os.PathLike,
        aliases: list[str],
        *,
        env_alias: str = "localnet",
        rpc: str = "http://127.0.0.1:9000",
        active_alias: str | None = None,
    ) -> Wallet:
        """Create a new wallet directory with one fresh ed25519 key per alias.

        Writes ``sui.keystore`` (mode 0600 from creation), ``sui.aliases`` and ``client.yaml`` (keystore path
        absolute, one env). The active address is ``active_alias``'s, else the first alias's.

        Args:
            directory: Folder to create (parents too) or reuse if it holds no wallet files.
            aliases: Aliases of the keys to generate; at least one, unique, Sui alias syntax.
            env_alias: Alias of the single environment.
            rpc: RPC URL of that environment.
            active_alias: Alias whose address becomes active; defaults to ``aliases[0]``.

        Returns:
            The new wallet.

        Raises:
            KeystoreError: If ``client.yaml`` (or a keystore/aliases file) already exists there.
            WalletError: On an empty, duplicate or invalid alias, or an ``active_alias`` not in ``aliases``.
        """
        folder = Path(directory).absolute()
        if not aliases:
            raise WalletError("create needs at least one alias")
        for alias in aliases:
            _check_alias(alias)
        dupes = sorted({a for a in aliases if aliases.count(a) > 1})
        if dupes:
            raise WalletError(f"duplicate aliases: {', '.join(dupes)}")
        if active_alias is not None and active_alias not in aliases:
            raise WalletError(f"active_alias {active_alias!r} is not one of {', '.join(aliases)}")

        client_yaml = folder / CLIENT_YAML
        keystore_path = folder / KEYSTORE_FILE
        aliases_path = folder / ALIASES_FILE
        # Refuse to overwrite any existing wallet file: overwriting a keystore would destroy keys.
        for existing in (client_yaml, keystore_path, aliases_path):
            if existing.exists():
                raise KeystoreError(f"refusing to create a wallet: {existing} already exists")
        folder.mkdir(parents=True, exist_ok=True)

        keypairs = [create_new_keypair() for _ in aliases]
        addresses = [address_from_public_key(int(kp.scheme), kp.public_key_bytes) for kp in keypairs]
        active = addresses[aliases.index(active_alias) if active_alias is not None else 0]
        config: dict[str, Any] = {
            "keystore": {"File": str(keystore_path)},
            "envs": [{"alias": env_alias, "rpc": rpc, "ws": None, "basic_auth": None}],
            "active_env": env_alias,
            "active_address": active,
        }
        wallet = cls(
            client_yaml=client_yaml,
            keystore_path=keystore_path,
            aliases_path=aliases_path,
            config=config,
            keypairs=keypairs,
            aliases=dict(zip(aliases, addresses)),
            active_address=active,
        )
        # Keystore first, client.yaml last: a half-made wallet is refused on retry rather than overwritten.
        wallet._save_keys()
        wallet._save_client_yaml()
        return wallet

    # -- persistence ----------------------------------------------------------------------------------------

    def _save_keys(self) -> None:
        """Write the keystore (0600) and the aliases file atomically, in Sui's JSON formats."""
        entries = [kp.serialize() for kp in self.__keypairs.values()]
        _atomic_write(
            self.keystore_path, (json.dumps(entries, indent=2) + "\n").encode(), 0o600, restrict=True
        )
        del entries
        alias_items = [
            {
                "alias": a.alias,
                "public_key_base64": base64.b64encode(bytes([a.scheme]) + a.public_key).decode(),
            }
            for a in self._accounts
            if a.alias is not None
        ]
        _atomic_write(self.aliases_path, (json.dumps(alias_items, indent=2) + "\n").encode(), 0o644)

    def _save_client_yaml(self) -> None:
        """Rewrite client.yaml, keeping keys this module does not know about."""
        self._config["active_address"] = self.active_address
        text = yaml.safe_dump(self._config, sort_keys=False, default_flow_style=False)
        _atomic_write(self.client_yaml, text.encode(), 0o644)

    def point_keystore_at(self, folder: str | os.PathLike) -> None:
        """Rewrite client.yaml so that it names the keystore at ``folder`` (absolute, as Sui writes it): a wallet
        built in one folder and then moved there whole (``localnet init`` builds the new home beside the old)."""
        self._config["keystore"] = {**self._config.get("keystore", {}), "File": str(Path(folder).absolute() / KEYSTORE_FILE)}
        self._save_client_yaml()

    # -- queries --------------------------------------------------------------------------------------------

    def accounts(self) -> list[Account]:
        """Return the accounts in keystore order."""
        return list(self._accounts)

    def aliases(self) -> dict[str, str]:
        """Return a mapping alias -> address (keystore order)."""
        return {a.alias: a.address for a in self._accounts if a.alias is not None}

    def alias_of(self, address: str) -> str | None:
        """Return the alias of ``address``, or None if it has none or is not a valid address."""
        try:
            return self._alias_by_address.get(normalize_address(address))
        except ValueError:
            return None

    def resolve(self, alias_or_address: str | None, *, allow_foreign: bool = False) -> str:
        """Resolve an alias or address to a normalized address of this wallet.

        Args:
            alias_or_address: None for the active address, an alias, or a ``0x…`` address.
            allow_foreign: Accept a ``0x…`` address that has no key in this wallet.

        Returns:
            The normalized address.

        Raises:
            UnknownAddressError: If the alias is unknown, or the address is not in the wallet (unless
                ``allow_foreign``), or the text is neither an alias nor a valid address.
        """
        if alias_or_address is None:
            return self.active_address
        if not isinstance(alias_or_address, str):
            raise UnknownAddressError(f"expected an alias or address, got {type(alias_or_address).__name__}")
        address = self._address_by_alias.get(alias_or_address)
        if address is not None:
            return address
        # Aliases start with a letter, so a 0x prefix always means an address.
        if alias_or_address.strip()[:2] in ("0x", "0X"):
            try:
                address = normalize_address(alias_or_address)
            except ValueError:
                raise UnknownAddressError(f"{alias_or_address!r} is not a valid Sui address") from None
            if allow_foreign or address in self.__keypairs:
                return address
            raise UnknownAddressError(f"address {address} has no key in wallet {self.client_yaml}")
        known = ", ".join(sorted(self._address_by_alias)) or "(none)"
        raise UnknownAddressError(f"unknown alias {alias_or_address!r}; known aliases: {known}")

    def resolve_any(self, alias_or_address: str) -> str:
        """Resolve an alias of this wallet or any ``0x…`` address (e.g. a recipient outside the wallet).

        Raises:
            UnknownAddressError: If it is neither a known alias nor a valid address.
        """
        if alias_or_address is None:
            raise UnknownAddressError("an alias or address is required")
        return self.resolve(alias_or_address, allow_foreign=True)

    def public_key(self, address: str) -> bytes:
        """Return the raw public key of an address (or alias) in this wallet.

        Raises:
            UnknownAddressError: If it has no key here.
        """
        return self._keypair(address).public_key_bytes

    # -- mutations ------------------------------------------------------------------------------------------

    def new_key(self, alias: str) -> Account:
        """Generate a new ed25519 key with ``alias``, append it, and save keystore and aliases atomically.

        Raises:
            WalletError: If the alias is invalid or already used.
        """
        _check_alias(alias)
        if alias in self._address_by_alias:
            raise WalletError(f"alias {alias!r} already exists in wallet {self.client_yaml}")
        kp = create_new_keypair()
        account = self._add(kp, alias)
        if account is None:  # a 2^-256 collision; better to fail loudly than silently drop the alias
            raise WalletError("generated key already exists in the wallet")
        try:
            self._save_keys()
        except BaseException:
            # Keep memory consistent with disk if the write failed.
            del self.__keypairs[account.address]
            self._accounts.remove(account)
            del self._alias_by_address[account.address]
            del self._address_by_alias[alias]
            raise
        return account

    def set_active_address(self, alias_or_address: str) -> None:
        """Make an alias or address of this wallet the active one and rewrite ``client.yaml``.

        Raises:
            UnknownAddressError: If it is not in this wallet.
        """
        address = self.resolve(alias_or_address)
        previous = self.active_address
        self.active_address = address
        try:
            self._save_client_yaml()
        except BaseException:
            self.active_address = previous
            self._config["active_address"] = previous
            raise

    def sign(self, address: str, tx_bytes: bytes) -> str:
        """Sign transaction bytes with the key of ``address`` (or alias) under the transaction intent.

        Args:
            address: Signer address or alias in this wallet.
            tx_bytes: BCS ``TransactionData`` bytes.

        Returns:
            Base64 Sui serialized signature ``flag ‖ signature ‖ public key``.

        Raises:
            UnknownAddressError: If the wallet has no key for ``address``.
        """
        if not isinstance(tx_bytes, (bytes, bytearray, memoryview)):
            raise TypeError("tx_bytes must be bytes")
        kp = self._keypair(address)
        return kp.new_sign_secure(base64.b64encode(bytes(tx_bytes)).decode())

    def sign_hash(self, address: str, digest: bytes) -> str:
        """Sign a 32-byte digest as it is (no intent) with the key of ``address`` (or alias): the Atoma node's
        signature over a request or response hash (``keystore.sign_hashed``). Checked by
        :func:`verify_hash_signature`.

        Returns:
            Base64 Sui serialized signature ``flag ‖ signature ‖ public key``.

        Raises:
            UnknownAddressError: If the wallet has no key for ``address``.
        """
        if not isinstance(digest, (bytes, bytearray)) or len(digest) != 32:
            raise TypeError("digest must be 32 bytes")
        kp = self._keypair(address)
        return kp.sign_raw(bytes(digest))

    def _keypair(self, address: str) -> SuiKeyPair:
        """Return the keypair of an address or alias; UnknownAddressError if absent."""
        resolved = self.resolve(address)
        kp = self.__keypairs.get(resolved)
        if kp is None:  # only reachable via None -> an active_address that has no key here
            raise UnknownAddressError(f"address {resolved} has no key in wallet {self.client_yaml}")
        return kp

    # -- safety ---------------------------------------------------------------------------------------------

    def __repr__(self) -> str:
        """Describe the wallet without any key material."""
        return (
            f"Wallet(client_yaml={str(self.client_yaml)!r}, accounts={len(self._accounts)}, "
            f"active_address={self.active_address!r}, active_env={self.active_env!r})"
        )

    __str__ = __repr__

    def __reduce__(self) -> Any:
        """Refuse pickling: it would copy private keys into whatever stores the pickle."""
        raise TypeError("Wallet cannot be pickled (it holds private keys); pickle its client_yaml path instead")
