"""The bytes a buyer and a node sign (atoma_ops.protocol.node_http) and the signatures over them (wallet
``sign_hash`` / ``verify_hash_signature``).

Expected JSON bytes are written out by hand from serde_json's rules (compact, own key order, Ryū floats); expected
hashes use hashlib directly; signatures are checked a second time with the ``cryptography`` package (Ed25519 over
the raw 32 bytes; ECDSA over SHA-256 of them for the secp curves, as fastcrypto and Sui sign), never only with the
code under test.
"""

from __future__ import annotations

import base64
import hashlib
import json

import pysui_fastcrypto as pfc
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from atoma_ops.protocol import node_http as nh
from atoma_ops.wallet import InvalidSignatureError, MalformedSignatureError, Wallet, verify_hash_signature


def H(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=32).digest()


# ====================================================================== compact JSON as serde_json writes it
@pytest.mark.parametrize("value, text", [
    (0.7, "0.7"), (1.0, "1.0"), (100.0, "100.0"), (-0.0, "-0.0"), (0.0, "0.0"),
    (1e15, "1000000000000000.0"), (1e16, "1e16"), (1.5e16, "1.5e16"), (123.456, "123.456"),
    (0.0001, "0.0001"), (0.00001, "0.00001"), (0.000001, "1e-6"), (1.5e-7, "1.5e-7"), (-2.5e20, "-2.5e20"),
    (5e-324, "5e-324"), (2**64, "1.8446744073709552e19"), (2**64 - 1, "18446744073709551615"), (-(2**63), "-9223372036854775808"),
])
def test_numbers(value, text):
    assert nh.compact_json(value) == text.encode()


def test_objects_keep_their_order_and_strings_their_characters():
    doc = json.loads('{"b": [1, "é\\n\\u0001\\"\\\\/\\u007f"], "a": null, "c": {"z": true, "y": false}}')
    assert nh.compact_json(doc) == b'{"b":[1,"\xc3\xa9\\n\\u0001\\"\\\\/\x7f"],"a":null,"c":{"z":true,"y":false}}'


def test_a_duplicated_key_keeps_its_first_place_and_last_value():
    assert nh.compact_json(nh.parse_body(b'{"a": 1, "b": 2, "a": 3}')) == b'{"a":3,"b":2}'


def test_the_signed_hash_ignores_spacing_but_not_order():
    spaced = b'{ "model" : "m",\n  "messages": [ {"role":"user","content":"hi"} ] }'
    compact = b'{"model":"m","messages":[{"role":"user","content":"hi"}]}'
    assert nh.body_hash(nh.parse_body(spaced)) == H(compact)
    assert nh.body_hash(nh.parse_body(b'{"messages":[{"role":"user","content":"hi"}],"model":"m"}')) != H(compact)


@pytest.mark.parametrize("raw", [
    b'{"a": NaN}', b'{"a": Infinity}', b'{"a": -Infinity}', b'{"a": 1e400}', b"{not json", b"",
    b'\xef\xbb\xbf{"a": 1}', b'{"a": "\xff"}', "{\"a\": 1}".encode("utf-16"),
])
def test_bodies_serde_json_refuses_are_refused(raw):
    with pytest.raises(nh.BodyError):
        nh.parse_body(raw)


def test_a_lone_surrogate_cannot_be_hashed():
    with pytest.raises(nh.BodyError):
        nh.body_hash(nh.parse_body(b'{"a": "\\ud800"}'))


def test_the_response_hash_leaves_out_its_own_fields():
    body = {"id": "x", "choices": [], "usage": {"prompt_tokens": 3}}
    assert nh.response_body_hash(body) == H(b'{"id":"x","choices":[],"usage":{"prompt_tokens":3}}')
    assert nh.response_body_hash({**body, "response_hash": "AA==", "signature": "BB=="}) == nh.response_body_hash(body)


# ====================================================================== signatures over a 32-byte hash
def _wallet(scheme: int) -> tuple[Wallet, str, bytes]:
    _, pub, prv = pfc.generate_new_keypair(scheme, None, "12")
    text = json.dumps([base64.b64encode(bytes([scheme]) + bytes(prv)).decode()])
    wallet = Wallet.from_keystore_text(text)
    address = "0x" + H(bytes([scheme]) + bytes(pub)).hex()
    return wallet, address, bytes(pub)


def _independently_verified(scheme: int, pub: bytes, sig: bytes, message: bytes) -> bool:
    try:
        if scheme == 0:
            Ed25519PublicKey.from_public_bytes(pub).verify(sig, message)
        else:
            curve = ec.SECP256K1() if scheme == 1 else ec.SECP256R1()
            key = ec.EllipticCurvePublicKey.from_encoded_point(curve, pub)
            der = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
            key.verify(der, message, ec.ECDSA(hashes.SHA256()))
        return True
    except Exception:  # noqa: BLE001 - the cryptography package says no
        return False


@pytest.mark.parametrize("scheme", [0, 1, 2])
def test_sign_hash_signs_the_raw_hash_and_verifies_to_the_signer(scheme):
    wallet, address, pub = _wallet(scheme)
    digest = H(b'{"messages":[]}')
    serialized = wallet.sign_hash(address, digest)
    raw = base64.b64decode(serialized)
    assert raw[0] == scheme and raw[65:] == pub and len(raw) == 1 + 64 + len(pub)
    assert _independently_verified(scheme, pub, raw[1:65], digest)  # no intent prefix, no extra hashing
    assert not _independently_verified(scheme, pub, raw[1:65], H(b"other"))
    assert verify_hash_signature(digest, serialized) == address
    with pytest.raises(InvalidSignatureError) as info:
        verify_hash_signature(H(b"another body"), serialized)
    assert not isinstance(info.value, MalformedSignatureError)  # readable, just not this body's: 401, not 400


def test_malformed_signatures_are_told_apart_from_wrong_ones():
    wallet, address, pub = _wallet(0)
    digest = H(b"{}")
    raw = bytearray(base64.b64decode(wallet.sign_hash(address, digest)))
    for bad in (
        "not base64!",
        "",
        base64.b64encode(bytes([1]) + raw[1:]).decode(),  # ed25519 bytes under the secp256k1 flag: wrong length
        base64.b64encode(bytes([3]) + raw[1:]).decode(),  # multisig flag
        base64.b64encode(bytes([1]) + raw[1:] + b"\x07").decode(),  # secp256k1 length, not a point
    ):
        with pytest.raises(MalformedSignatureError):
            verify_hash_signature(digest, bad)
    raw[5] ^= 1
    with pytest.raises(InvalidSignatureError) as info:
        verify_hash_signature(digest, base64.b64encode(bytes(raw)).decode())
    assert not isinstance(info.value, MalformedSignatureError)


def test_a_body_nested_past_the_parsers_depth_is_refused_not_crashed():
    with pytest.raises(nh.BodyError):
        nh.parse_body(b"[" * 5000 + b"]" * 5000)
    deep: list = []
    for _ in range(5000):
        deep = [deep]
    with pytest.raises(nh.BodyError):
        nh.compact_json(deep)
