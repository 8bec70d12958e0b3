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
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .errors import KeystoreError, UnknownAddressError, WalletError
from .files import (
    ALIASES_FILE,
    CLIENT_YAML,
    KEYSTORE_FILE,
    _atomic_write,
    _check_alias,
    _check_aliases_held,
    _client_dir_path,
    _parse_key_entry,
    _read_json_list,
    _read_text,
)
from .keys import (
    SuiKeyPair,
    address_from_public_key,
    create_new_keypair,
    normalize_address,
)


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
