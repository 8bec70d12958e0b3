"""Tests for atoma_ops.wallet: Sui file formats, key handling, signing and verification."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import pickle
import stat
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from pysui.sui.sui_crypto import SignatureScheme, create_new_keypair

from atoma_ops.wallet import (
    Account,
    InvalidSignatureError,
    KeystoreError,
    UnknownAddressError,
    Wallet,
    WalletError,
    address_from_public_key,
    normalize_address,
    verify_signature,
)

TX = b"\x00\x01some-bcs-transaction-data\xff" * 3


def _expected_address(flag: int, pub: bytes) -> str:
    """Sui address computed independently of the module under test."""
    return "0x" + hashlib.blake2b(bytes([flag]) + pub, digest_size=32).hexdigest()


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _write_sui_dir(folder: Path, entries: list, aliases: list | None = None, *, keystore_ref: str | None = None,
                   active: str | None = None) -> Path:
    """Write client.yaml + keystore (+ aliases) by hand, in Sui's formats."""
    folder.mkdir(parents=True, exist_ok=True)
    keystore = folder / "sui.keystore"
    keystore.write_text(json.dumps(entries))
    if aliases is not None:
        (folder / "sui.aliases").write_text(json.dumps(aliases))
    lines = [
        "---",
        "keystore:",
        f"  File: {keystore_ref or keystore}",
        "envs:",
        "  - alias: localnet",
        '    rpc: "http://127.0.0.1:9000"',
        "    ws: ~",
        "    basic_auth: ~",
        "active_env: localnet",
        f'active_address: "{active}"' if active else "active_address: ~",
    ]
    client = folder / "client.yaml"
    client.write_text("\n".join(lines) + "\n")
    return client


@pytest.fixture
def wallet(tmp_path: Path) -> Wallet:
    return Wallet.create(tmp_path / "w", ["alice", "bob"])


# -- addresses ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0x2", "0x" + "0" * 63 + "2"),
        ("2", "0x" + "0" * 63 + "2"),
        ("0xABCDEF", "0x" + "0" * 58 + "abcdef"),
        ("0X" + "F" * 64, "0x" + "f" * 64),
        ("  0x1  ", "0x" + "0" * 63 + "1"),
    ],
)
def test_normalize_address_pads_and_lowercases(text: str, expected: str) -> None:
    assert normalize_address(text) == expected


@pytest.mark.parametrize("text", ["", "0x", "0xg1", "hello", "0x" + "1" * 65, "0x 12", "0x-1"])
def test_normalize_address_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        normalize_address(text)


@given(st.integers(min_value=0, max_value=2**256 - 1))
def test_normalize_address_round_trips_any_u256(n: int) -> None:
    assert normalize_address(hex(n)) == "0x" + format(n, "064x")
    assert int(normalize_address(format(n, "X")), 16) == n


def test_address_from_public_key_matches_blake2b() -> None:
    for scheme in (SignatureScheme.ED25519, SignatureScheme.SECP256K1, SignatureScheme.SECP256R1):
        _, kp = create_new_keypair(scheme)
        pub = bytes(kp.public_key.key_bytes)
        assert address_from_public_key(int(scheme), pub) == _expected_address(int(scheme), pub)


def test_address_from_public_key_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        address_from_public_key(0, b"\x01" * 33)  # ed25519 keys are 32 bytes
    with pytest.raises(ValueError):
        address_from_public_key(3, b"\x01" * 32)  # multisig: not a single-key scheme


# -- create / load ------------------------------------------------------------------------------------------


def test_create_then_load_round_trips(tmp_path: Path) -> None:
    created = Wallet.create(tmp_path / "w", ["alice", "bob", "carol"], active_alias="bob")
    loaded = Wallet.load(tmp_path / "w" / "client.yaml")

    assert [a.address for a in loaded.accounts()] == [a.address for a in created.accounts()]
    assert loaded.aliases() == created.aliases()
    assert list(loaded.aliases()) == ["alice", "bob", "carol"]
    assert loaded.active_address == created.aliases()["bob"]
    assert loaded.active_env == "localnet"
    assert loaded.envs[0]["rpc"] == "http://127.0.0.1:9000"
    for account in loaded.accounts():
        assert account.scheme == 0
        assert account.address == _expected_address(0, account.public_key)
        assert len(account.address) == 66
        assert loaded.public_key(account.address) == account.public_key
    assert len({a.address for a in loaded.accounts()}) == 3


def test_create_writes_sui_formats(wallet: Wallet) -> None:
    config = yaml.safe_load(wallet.client_yaml.read_text())
    assert config["keystore"]["File"] == str(wallet.keystore_path)
    assert Path(config["keystore"]["File"]).is_absolute()
    assert config["envs"] == [{"alias": "localnet", "rpc": "http://127.0.0.1:9000", "ws": None, "basic_auth": None}]
    assert config["active_env"] == "localnet"
    assert config["active_address"] == wallet.aliases()["alice"]  # a string, not a YAML hex int

    entries = json.loads(wallet.keystore_path.read_text())
    assert len(entries) == 2
    for entry, account in zip(entries, wallet.accounts()):
        raw = base64.b64decode(entry)
        assert len(raw) == 33 and raw[0] == 0

    aliases = json.loads(wallet.aliases_path.read_text())
    assert wallet.aliases_path == wallet.keystore_path.parent / "sui.aliases"
    assert [a["alias"] for a in aliases] == ["alice", "bob"]
    for item, account in zip(aliases, wallet.accounts()):
        assert base64.b64decode(item["public_key_base64"]) == b"\x00" + account.public_key


def test_create_keystore_is_0600_even_with_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        w = Wallet.create(tmp_path / "w", ["alice"])
    finally:
        os.umask(old)
    assert _mode(w.keystore_path) == 0o600
    assert not [p for p in w.keystore_path.parent.iterdir() if p.name.endswith(".tmp")]


def test_keystore_is_exactly_0600_under_strict_umask(tmp_path: Path) -> None:
    old = os.umask(0o377)  # would leave the file unreadable (0o400 or less) without an explicit chmod
    try:
        w = Wallet.create(tmp_path / "w", ["alice"])
        w.new_key("bob")
    finally:
        os.umask(old)
    assert _mode(w.keystore_path) == 0o600
    assert list(Wallet.load(w.client_yaml).aliases()) == ["alice", "bob"]


def test_create_refuses_existing_wallet(tmp_path: Path, wallet: Wallet) -> None:
    before = wallet.keystore_path.read_bytes()
    with pytest.raises(KeystoreError, match="client.yaml"):
        Wallet.create(wallet.client_yaml.parent, ["alice"])
    assert wallet.keystore_path.read_bytes() == before


def test_create_refuses_existing_keystore_without_client_yaml(tmp_path: Path) -> None:
    folder = tmp_path / "w"
    folder.mkdir()
    (folder / "sui.keystore").write_text("[]")
    with pytest.raises(KeystoreError, match="sui.keystore"):
        Wallet.create(folder, ["alice"])
    assert (folder / "sui.keystore").read_text() == "[]"


@pytest.mark.parametrize("aliases", [[], ["a", "a"], ["1abc"], ["has space"], ["0xabc"]])
def test_create_rejects_bad_aliases(tmp_path: Path, aliases: list[str]) -> None:
    with pytest.raises(WalletError):
        Wallet.create(tmp_path / "w", aliases)
    assert not (tmp_path / "w" / "client.yaml").exists()


def test_create_rejects_unknown_active_alias(tmp_path: Path) -> None:
    with pytest.raises(WalletError):
        Wallet.create(tmp_path / "w", ["alice"], active_alias="bob")


def test_hand_written_keystore_loads_and_signs_like_pysui(tmp_path: Path) -> None:
    _, kp_ed = create_new_keypair(SignatureScheme.ED25519)
    _, kp_k1 = create_new_keypair(SignatureScheme.SECP256K1)
    _, kp_r1 = create_new_keypair(SignatureScheme.SECP256R1)
    kps = [kp_ed, kp_k1, kp_r1]
    entries = [kp.serialize() for kp in kps]
    pubs = [(int(kp.scheme), bytes(kp.public_key.key_bytes)) for kp in kps]
    aliases = [{"alias": "ed", "public_key_base64": base64.b64encode(bytes([f]) + p).decode()} for f, p in pubs[:1]]
    client = _write_sui_dir(tmp_path / "sui", entries, aliases)

    w = Wallet.load(client)
    assert [a.address for a in w.accounts()] == [_expected_address(f, p) for f, p in pubs]
    assert [a.scheme for a in w.accounts()] == [0, 1, 2]
    assert [a.alias for a in w.accounts()] == ["ed", None, None]
    assert w.active_address == _expected_address(*pubs[0])  # active_address: ~ falls back to first key

    tx_b64 = base64.b64encode(TX).decode()
    ed_addr = _expected_address(*pubs[0])
    # ed25519 is deterministic, so the wallet's signature must equal pysui's own.
    assert w.sign(ed_addr, TX) == kp_ed.new_sign_secure(tx_b64)
    for (flag, pub) in pubs:
        addr = _expected_address(flag, pub)
        assert verify_signature(TX, w.sign(addr, TX)) == addr


def test_ed25519_signature_verifies_with_independent_library(tmp_path: Path) -> None:
    ed = pytest.importorskip("cryptography.hazmat.primitives.asymmetric.ed25519")
    _, kp = create_new_keypair(SignatureScheme.ED25519)
    entry = kp.serialize()
    w = Wallet.load(_write_sui_dir(tmp_path / "sui", [entry]))
    seed = base64.b64decode(entry)[1:]
    priv = ed.Ed25519PrivateKey.from_private_bytes(seed)
    pub = priv.public_key().public_bytes_raw()
    assert w.accounts()[0].public_key == pub
    assert w.accounts()[0].address == _expected_address(0, pub)

    sig = base64.b64decode(w.sign(w.active_address, TX))
    assert sig[0] == 0 and sig[65:] == pub and len(sig) == 97
    digest = hashlib.blake2b(bytes([0, 0, 0]) + TX, digest_size=32).digest()
    ed.Ed25519PublicKey.from_public_bytes(pub).verify(sig[1:65], digest)  # raises if wrong


def test_bech32_keystore_entry_is_accepted(tmp_path: Path) -> None:
    _, kp = create_new_keypair(SignatureScheme.ED25519)
    bech = kp.to_bech32()
    assert bech.startswith("suiprivkey")
    pub = bytes(kp.public_key.key_bytes)
    w = Wallet.load(_write_sui_dir(tmp_path / "sui", [bech]))
    assert w.accounts()[0].address == _expected_address(0, pub)
    assert verify_signature(TX, w.sign(w.active_address, TX)) == _expected_address(0, pub)


def test_relative_keystore_path_resolves_against_client_yaml_folder(tmp_path: Path, monkeypatch) -> None:
    _, kp = create_new_keypair(SignatureScheme.ED25519)
    folder = tmp_path / "cfg"
    (folder / "keys").mkdir(parents=True)
    (folder / "keys" / "sui.keystore").write_text(json.dumps([kp.serialize()]))
    client = _write_sui_dir(folder, [], keystore_ref="keys/sui.keystore")
    monkeypatch.chdir(tmp_path)  # a cwd-relative resolution would look in tmp_path/keys
    w = Wallet.load(client)
    assert w.keystore_path == folder / "keys" / "sui.keystore"
    assert w.aliases_path == folder / "keys" / "sui.aliases"
    assert w.accounts()[0].address == _expected_address(0, bytes(kp.public_key.key_bytes))


def test_wide_keystore_mode_still_loads(wallet: Wallet) -> None:
    os.chmod(wallet.keystore_path, 0o644)
    loaded = Wallet.load(wallet.client_yaml)
    assert loaded.aliases() == wallet.aliases()


def test_missing_aliases_file_loads_without_aliases(wallet: Wallet) -> None:
    wallet.aliases_path.unlink()
    loaded = Wallet.load(wallet.client_yaml)
    assert loaded.aliases() == {}
    assert [a.alias for a in loaded.accounts()] == [None, None]


def test_unquoted_active_address_in_yaml_is_accepted(wallet: Wallet) -> None:
    bob = wallet.aliases()["bob"]
    text = wallet.client_yaml.read_text()
    config = yaml.safe_load(text)
    config["active_address"] = bob
    # YAML 1.1 reads unquoted 0x… as an int; a hand-edited file may look like this.
    out = yaml.safe_dump(config).replace(f"'{bob}'", bob)
    assert f"active_address: {bob}" in out
    wallet.client_yaml.write_text(out)
    assert Wallet.load(wallet.client_yaml).active_address == bob


# -- malformed files ----------------------------------------------------------------------------------------


def _assert_clean(exc: BaseException, secret: str) -> None:
    """The error must not carry the entry text, neither in its message nor in a chained exception."""
    assert secret not in str(exc)
    assert secret not in repr(exc)
    assert exc.__cause__ is None
    assert exc.__suppress_context__ or exc.__context__ is None


@pytest.mark.parametrize(
    "entry",
    [
        "not base64 at all!! zzSECRETzz",
        base64.b64encode(b"\x00" + b"\x07" * 40).decode(),  # wrong length
        base64.b64encode(b"\x09" + b"\x07" * 32).decode(),  # unknown scheme flag
        "suiprivkey1qqqqSECRETbogus",  # bech32 prefix, bad checksum
    ],
)
def test_bad_keystore_entry_is_reported_without_its_text(tmp_path: Path, entry: str) -> None:
    _, good = create_new_keypair(SignatureScheme.ED25519)
    client = _write_sui_dir(tmp_path / "sui", [good.serialize(), entry])
    with pytest.raises(KeystoreError) as info:
        Wallet.load(client)
    message = str(info.value)
    assert str(tmp_path / "sui" / "sui.keystore") in message
    assert "entry 1" in message
    _assert_clean(info.value, entry)
    _assert_clean(info.value, good.serialize())


def test_non_string_keystore_entry(tmp_path: Path) -> None:
    client = _write_sui_dir(tmp_path / "sui", [123])
    with pytest.raises(KeystoreError, match="entry 0 is not a string"):
        Wallet.load(client)


@pytest.mark.parametrize("content", ["{not json", '{"a": 1}', '"AAAA"'])
def test_keystore_not_a_json_list(tmp_path: Path, content: str) -> None:
    client = _write_sui_dir(tmp_path / "sui", [])
    (tmp_path / "sui" / "sui.keystore").write_text(content)
    with pytest.raises(KeystoreError) as info:
        Wallet.load(client)
    assert "sui.keystore" in str(info.value)


def test_missing_files_name_the_file(tmp_path: Path, wallet: Wallet) -> None:
    with pytest.raises(KeystoreError, match="nope.yaml"):
        Wallet.load(tmp_path / "nope.yaml")
    wallet.keystore_path.unlink()
    with pytest.raises(KeystoreError) as info:
        Wallet.load(wallet.client_yaml)
    assert str(wallet.keystore_path) in str(info.value)


@pytest.mark.parametrize(
    "content",
    [
        "keystore: [unclosed",
        "- just\n- a list\n",
        "envs: []\n",  # no keystore
        "keystore:\n  InMem: {}\n",
        "keystore:\n  File: sui.keystore\nactive_address: not-an-address\n",
    ],
)
def test_malformed_client_yaml(wallet: Wallet, content: str) -> None:
    wallet.client_yaml.write_text(content)
    with pytest.raises(KeystoreError) as info:
        Wallet.load(wallet.client_yaml)
    assert "client.yaml" in str(info.value)


@pytest.mark.parametrize(
    "content",
    [
        "nope",
        "{}",
        '["x"]',
        '[{"alias": "a"}]',
        '[{"alias": "a", "public_key_base64": "%%%"}]',
        '[{"alias": "a", "public_key_base64": "AAE="}]',  # flag 0 with 1-byte key
    ],
)
def test_malformed_aliases_file(wallet: Wallet, content: str) -> None:
    wallet.aliases_path.write_text(content)
    with pytest.raises(KeystoreError) as info:
        Wallet.load(wallet.client_yaml)
    assert "sui.aliases" in str(info.value)


def test_alias_for_key_not_in_keystore_is_ignored(wallet: Wallet) -> None:
    _, stranger = create_new_keypair(SignatureScheme.ED25519)
    items = json.loads(wallet.aliases_path.read_text())
    ghost = base64.b64encode(b"\x00" + bytes(stranger.public_key.key_bytes)).decode()
    items.append({"alias": "ghost", "public_key_base64": ghost})
    items.append({"alias": "alice2", "public_key_base64": items[0]["public_key_base64"]})  # 2nd alias: first wins
    wallet.aliases_path.write_text(json.dumps(items))
    loaded = Wallet.load(wallet.client_yaml)
    assert loaded.aliases() == wallet.aliases()
    with pytest.raises(UnknownAddressError):
        loaded.resolve("ghost")
    with pytest.raises(UnknownAddressError):
        loaded.resolve("alice2")


def test_damaged_entry_of_the_right_length_is_named(wallet: Wallet) -> None:
    """One flipped byte of bob's key still decodes to a key (of another address): reported as entry 1 damaged,
    with the file, not as an unknown alias."""
    entries = json.loads(wallet.keystore_path.read_text())
    raw = bytearray(base64.b64decode(entries[1]))
    raw[7] ^= 0x01
    entries[1] = base64.b64encode(bytes(raw)).decode()
    wallet.keystore_path.write_text(json.dumps(entries))
    with pytest.raises(KeystoreError) as info:
        Wallet.load(wallet.client_yaml)
    message = str(info.value)
    assert "entry 1 is damaged" in message and "'bob'" in message and str(wallet.keystore_path) in message
    assert entries[1] not in message and entries[0] not in message  # no key material in the message


def test_same_alias_for_two_keys_is_rejected(wallet: Wallet) -> None:
    items = json.loads(wallet.aliases_path.read_text())
    items[1]["alias"] = items[0]["alias"]
    wallet.aliases_path.write_text(json.dumps(items))
    with pytest.raises(KeystoreError, match="two different keys"):
        Wallet.load(wallet.client_yaml)


# -- resolve ------------------------------------------------------------------------------------------------


def test_resolve(wallet: Wallet) -> None:
    alice, bob = wallet.aliases()["alice"], wallet.aliases()["bob"]
    assert wallet.resolve(None) == alice
    assert wallet.resolve("bob") == bob
    assert wallet.resolve(bob.upper().replace("0X", "0x")) == bob
    assert wallet.alias_of(bob) == "bob"
    assert wallet.alias_of(bob.upper()) == "bob"
    assert wallet.alias_of("0x2") is None
    assert wallet.alias_of("garbage") is None


def test_resolve_unknown_alias_names_known_aliases(wallet: Wallet) -> None:
    with pytest.raises(UnknownAddressError) as info:
        wallet.resolve("mallory")
    assert "mallory" in str(info.value)
    assert "alice" in str(info.value) and "bob" in str(info.value)
    with pytest.raises(UnknownAddressError):
        wallet.resolve_any("mallory")


def test_resolve_foreign_address(wallet: Wallet) -> None:
    with pytest.raises(UnknownAddressError):
        wallet.resolve("0x2")
    assert wallet.resolve("0x2", allow_foreign=True) == "0x" + "0" * 63 + "2"
    assert wallet.resolve_any("0x2") == "0x" + "0" * 63 + "2"
    assert wallet.resolve_any("alice") == wallet.aliases()["alice"]
    with pytest.raises(UnknownAddressError):
        wallet.resolve_any("0xnothex")


# -- sign / verify ------------------------------------------------------------------------------------------


def test_sign_verifies_and_returns_signer(wallet: Wallet) -> None:
    for alias, address in wallet.aliases().items():
        sig = wallet.sign(address, TX)
        assert verify_signature(TX, sig) == address
        raw = base64.b64decode(sig)
        assert len(raw) == 97 and raw[0] == 0 and raw[65:] == wallet.public_key(address)
        assert wallet.sign(alias, TX) == sig  # alias accepted, ed25519 deterministic


def test_sign_unknown_address(wallet: Wallet) -> None:
    with pytest.raises(UnknownAddressError):
        wallet.sign("0x" + "ab" * 32, TX)
    with pytest.raises(UnknownAddressError):
        wallet.public_key("0x" + "ab" * 32)


def test_verify_rejects_tampered_tx(wallet: Wallet) -> None:
    sig = wallet.sign(wallet.active_address, TX)
    for i in (0, len(TX) // 2, len(TX) - 1):
        tampered = bytearray(TX)
        tampered[i] ^= 0x01
        with pytest.raises(InvalidSignatureError):
            verify_signature(bytes(tampered), sig)
    with pytest.raises(InvalidSignatureError):
        verify_signature(TX + b"\x00", sig)


@pytest.mark.parametrize("index", [0, 1, 33, 64, 65, 80, 96])
def test_verify_rejects_tampered_signature(wallet: Wallet, index: int) -> None:
    raw = bytearray(base64.b64decode(wallet.sign(wallet.active_address, TX)))
    raw[index] ^= 0x01
    with pytest.raises(InvalidSignatureError):
        verify_signature(TX, base64.b64encode(bytes(raw)).decode())


def test_verify_rejects_signature_from_another_key_with_swapped_pubkey(wallet: Wallet) -> None:
    alice, bob = wallet.aliases()["alice"], wallet.aliases()["bob"]
    raw = bytearray(base64.b64decode(wallet.sign(alice, TX)))
    raw[65:] = wallet.public_key(bob)  # claim bob signed it
    with pytest.raises(InvalidSignatureError):
        verify_signature(TX, base64.b64encode(bytes(raw)).decode())


@pytest.mark.parametrize(
    "sig",
    [
        "",
        "!!!not base64!!!",
        "AAAA",
        base64.b64encode(b"\x00" + b"\x01" * 96).decode(),  # right shape, garbage content
        base64.b64encode(b"\x03" + b"\x01" * 96).decode(),  # multisig flag
        base64.b64encode(b"\x01" + b"\x01" * 97).decode(),  # secp256k1 shape, pubkey not on the curve
        base64.b64encode(b"\x00" + b"\x01" * 200).decode(),
    ],
)
def test_verify_rejects_garbage(sig: str) -> None:
    with pytest.raises(InvalidSignatureError):
        verify_signature(TX, sig)


def test_verify_rejects_non_str_and_non_bytes(wallet: Wallet) -> None:
    sig = wallet.sign(wallet.active_address, TX)
    with pytest.raises(InvalidSignatureError):
        verify_signature(TX, base64.b64decode(sig))  # type: ignore[arg-type]
    with pytest.raises(InvalidSignatureError):
        verify_signature(TX.hex(), sig)  # type: ignore[arg-type]


# -- mutations ----------------------------------------------------------------------------------------------


def test_new_key_persists_and_keeps_keystore_0600(wallet: Wallet) -> None:
    os.chmod(wallet.keystore_path, 0o644)  # a rewrite must narrow it back
    account = wallet.new_key("carol")
    assert isinstance(account, Account)
    assert account.alias == "carol"
    assert account.address == _expected_address(0, account.public_key)
    assert _mode(wallet.keystore_path) == 0o600
    assert not [p for p in wallet.keystore_path.parent.iterdir() if p.name.endswith(".tmp")]

    loaded = Wallet.load(wallet.client_yaml)
    assert list(loaded.aliases()) == ["alice", "bob", "carol"]
    assert loaded.aliases()["carol"] == account.address
    assert verify_signature(TX, loaded.sign("carol", TX)) == account.address


def test_new_key_refuses_duplicate_alias(wallet: Wallet) -> None:
    before = wallet.keystore_path.read_bytes()
    with pytest.raises(WalletError, match="alice"):
        wallet.new_key("alice")
    with pytest.raises(WalletError):
        wallet.new_key("9lives")
    assert wallet.keystore_path.read_bytes() == before
    assert len(wallet.accounts()) == 2


def test_set_active_address_persists(wallet: Wallet) -> None:
    bob = wallet.aliases()["bob"]
    wallet.set_active_address("bob")
    assert wallet.active_address == bob
    assert wallet.resolve(None) == bob
    loaded = Wallet.load(wallet.client_yaml)
    assert loaded.active_address == bob
    assert loaded.envs == wallet.envs
    with pytest.raises(UnknownAddressError):
        wallet.set_active_address("0x2")
    assert Wallet.load(wallet.client_yaml).active_address == bob


def test_set_active_address_keeps_unknown_yaml_keys(wallet: Wallet) -> None:
    config = yaml.safe_load(wallet.client_yaml.read_text())
    config["envs"][0]["chain_id"] = "4c78adac"
    config["external_keys"] = None
    wallet.client_yaml.write_text(yaml.safe_dump(config, sort_keys=False))
    loaded = Wallet.load(wallet.client_yaml)
    loaded.set_active_address("bob")
    after = yaml.safe_load(wallet.client_yaml.read_text())
    assert after["envs"][0]["chain_id"] == "4c78adac"
    assert "external_keys" in after
    assert after["active_address"] == wallet.aliases()["bob"]


# -- no key material leaks ----------------------------------------------------------------------------------


def test_repr_and_str_hold_no_key_material(wallet: Wallet) -> None:
    entries = json.loads(wallet.keystore_path.read_text())
    private_parts = []
    for entry in entries:
        raw = base64.b64decode(entry)
        private_parts += [entry, raw[1:].hex(), base64.b64encode(raw[1:]).decode().rstrip("=")]
    texts = [repr(wallet), str(wallet), repr(wallet.accounts()), str(wallet.accounts()[0])]
    for text in texts:
        for part in private_parts:
            assert part not in text
    for account in wallet.accounts():
        assert len(account.public_key) == 32
        assert account.public_key not in [base64.b64decode(e)[1:] for e in entries]


def test_wallet_cannot_be_pickled(wallet: Wallet) -> None:
    with pytest.raises(TypeError):
        pickle.dumps(wallet)
