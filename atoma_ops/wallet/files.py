"""Sui's wallet files, as the ``sui`` CLI writes them: ``client.yaml``, the keystore (a JSON list of keys) and the
aliases file; atomic writes with exact modes (a keystore is 0600), and reading them back with errors that name the
file and the entry, never its key.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import secrets
from pathlib import Path
from typing import Any

from .errors import KeystoreError, WalletError
from .keys import (
    _ALIAS_RE,
    _BECH32_PREFIX,
    _PRIVATE_KEY_LEN,
    _PUBLIC_KEY_LEN,
    SuiKeyPair,
    address_from_public_key,
    keypair_from_keystring,
)

CLIENT_YAML = "client.yaml"
KEYSTORE_FILE = "sui.keystore"
ALIASES_FILE = "sui.aliases"


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
