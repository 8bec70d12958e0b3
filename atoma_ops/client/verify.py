"""Checking a node's signature on its answers (atoma-protocol.md §17, ``sign_response_and_update_stack_hash``).

A JSON response body carries ``response_hash`` (base64 of blake2b-256 of the body's compact JSON without those two
fields) and ``signature`` (the node's Sui signature over that hash). A stream signs its final chunk the same way;
that chunk's ``atoma`` object names the request's payload hash and the hash of all the content streamed before it,
so its signature covers the whole answer and the request it answers. Who signed is the address derived from the
signature's public key: the caller compares it with the stack's node (``expected``).
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from ..protocol.node_http import RESPONSE_HASH_KEY, SIGNATURE_KEY, BodyError, blake2b256, response_body_hash
from ..wallet import InvalidSignatureError, normalize_address, verify_hash_signature


class ResponseSignatureError(ValueError):
    """A node answer whose signature is missing, does not match its body, or is not the expected node's."""


def _b64(value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        raise ResponseSignatureError(f"the answer has no {what}")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ResponseSignatureError(f"{what} is not base64") from None


def verify_response(body: Any, expected: str | None = None) -> str:
    """Check a signed response body (or a stream's final chunk) and return the signer's address.

    Raises:
        ResponseSignatureError: no ``response_hash``/``signature``, a hash that is not the body's, a signature
            that does not verify over it, or a signer other than ``expected``.
    """
    if not isinstance(body, dict):
        raise ResponseSignatureError("a signed answer is a JSON object")
    claimed = _b64(body.get(RESPONSE_HASH_KEY), RESPONSE_HASH_KEY)
    try:
        actual = response_body_hash(body)
    except BodyError as exc:
        raise ResponseSignatureError(f"the answer cannot be hashed: {exc}") from None
    if claimed != actual:
        raise ResponseSignatureError("response_hash is not the hash of this answer (it was changed after signing)")
    try:
        signer = verify_hash_signature(actual, body.get(SIGNATURE_KEY))  # type: ignore[arg-type]
    except InvalidSignatureError as exc:
        raise ResponseSignatureError(f"the node's signature does not verify: {exc}") from None
    if expected is not None and signer != normalize_address(expected):
        raise ResponseSignatureError(f"the answer is signed by {signer}, not by the stack's node {expected}")
    return signer


class StreamCheck:
    """Follows a stream's chunks (parsed JSON) and checks the final one::

        check = StreamCheck(payload_hash)
        for chunk in chunks: check.add(chunk)
        signer = check.verify(expected=node_address)
    """

    def __init__(self, payload_hash: bytes | None = None):
        self.payload_hash = payload_hash
        self.pieces: list[str] = []
        self.final: dict | None = None

    @property
    def content(self) -> str:
        return "".join(self.pieces)

    def add(self, chunk: dict) -> None:
        for choice in chunk.get("choices") or ():
            text = (choice.get("delta") or {}).get("content")
            if isinstance(text, str):
                self.pieces.append(text)
        if SIGNATURE_KEY in chunk:
            self.final = chunk

    def verify(self, expected: str | None = None) -> str:
        """The signer of the final chunk, once it is checked to cover this stream's content and request.

        Raises:
            ResponseSignatureError: no signed final chunk, content or request other than the signed ones, or a bad
                signature.
        """
        if self.final is None:
            raise ResponseSignatureError("the stream ended without a signed final chunk")
        signer = verify_response(self.final, expected)
        atoma = self.final.get("atoma") or {}
        if _b64(atoma.get("content_hash"), "atoma.content_hash") != blake2b256(self.content.encode("utf-8")):
            raise ResponseSignatureError("the streamed content is not the content the node signed")
        if self.payload_hash is not None and _b64(atoma.get("payload_hash"), "atoma.payload_hash") != self.payload_hash:
            raise ResponseSignatureError("the node signed an answer to another request")
        return signer
