"""Signing requests as a stack's owner: ``X-Signature`` = the buyer's Sui signature over blake2b-256 of the body's
compact JSON (its own key order), the bytes the Atoma node hashes (``protocol.node_http``).

The signature covers the body only: not ``X-Stack-Small-Id`` nor any other header, and nothing in it is unique to
one sending, so the same signed body can be sent again (the node charges it again; an ``X-Request-Id`` makes a
re-send answer the recorded response instead).
"""

from __future__ import annotations

from typing import Any, Generator

import httpx

from ..protocol.node_http import (
    SIGNATURE_HEADER,
    STACK_HEADER,
    TX_DIGEST_HEADER,
    body_hash,
    compact_json,
    parse_body,
)
from ..wallet import Wallet


class RequestSigner:
    """Signs request bodies with one address's key from a wallet (the stack's owner).

    Args:
        wallet: the buyer's wallet (``Wallet.load(client.yaml)``); its keys never leave it.
        address: alias or address of the signing key (default: the wallet's active address).
    """

    def __init__(self, wallet: Wallet, address: str | None = None):
        self.wallet = wallet
        self.address = wallet.resolve(address)

    def sign_hash(self, digest: bytes) -> str:
        return self.wallet.sign_hash(self.address, digest)

    def sign(self, body: Any) -> tuple[bytes, str, bytes]:
        """``(bytes to send, X-Signature, payload hash)`` for a body given as a dict (sent in its compact form) or
        as the bytes a client already serialised (sent as they are; the signature is over their compact form)."""
        if isinstance(body, (bytes, bytearray)):
            raw = bytes(body)
            digest = body_hash(parse_body(raw))
        else:
            raw = compact_json(body)
            digest = body_hash(body)
        return raw, self.sign_hash(digest), digest

    def headers(self, body: Any, stack: int | None = None, tx_digest: str | None = None) -> dict[str, str]:
        _, signature, _ = self.sign(body)
        return _headers(signature, stack, tx_digest)

    def __repr__(self) -> str:
        return f"RequestSigner(address={self.address!r})"


def _headers(signature: str, stack: int | None, tx_digest: str | None) -> dict[str, str]:
    out = {SIGNATURE_HEADER: signature}
    if stack is not None:
        out[STACK_HEADER] = str(int(stack))
    if tx_digest:
        out[TX_DIGEST_HEADER] = tx_digest
    return out


class AtomaAuth(httpx.Auth):
    """An ``httpx.Auth`` that signs every request body it sees and names the stack: set it on the http client of
    any OpenAI-compatible SDK and each ``POST`` carries ``X-Signature`` (and ``X-Stack-Small-Id`` /
    ``X-Tx-Digest`` when given). Requests without a body (``GET /health``) pass unsigned. The payload hash of the
    last request signed is kept in ``last_payload_hash`` (a stream's final chunk names it)."""

    requires_request_body = True

    def __init__(self, signer: RequestSigner, stack: int | None = None, tx_digest: str | None = None):
        self.signer = signer
        self.stack = stack
        self.tx_digest = tx_digest
        self.last_payload_hash: bytes | None = None

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        if request.content:
            _, signature, digest = self.signer.sign(request.content)
            self.last_payload_hash = digest
            request.headers.update(_headers(signature, self.stack, self.tx_digest))
        elif self.stack is not None:
            request.headers[STACK_HEADER] = str(int(self.stack))
        yield request


def openai_client(base_url: str, signer: RequestSigner, stack: int, *, tx_digest: str | None = None,
                  asynchronous: bool = False, **options: Any) -> Any:
    """The official ``openai`` SDK's client for a node, every request signed by ``signer`` for ``stack``::

        client = openai_client("http://127.0.0.1:8000/v1", RequestSigner(wallet, "buyer"), stack=7)
        client.chat.completions.create(model=..., messages=[...])

    ``options`` go to ``openai.OpenAI`` (``max_retries``, ``timeout``…). Needs the ``openai`` package."""
    import openai

    auth = AtomaAuth(signer, stack, tx_digest)
    timeout = options.pop("timeout", 600.0)
    if asynchronous:
        return openai.AsyncOpenAI(base_url=base_url, api_key=options.pop("api_key", "unused"),
                                  http_client=httpx.AsyncClient(auth=auth, timeout=timeout), **options)
    return openai.OpenAI(base_url=base_url, api_key=options.pop("api_key", "unused"),
                         http_client=httpx.Client(auth=auth, timeout=timeout), **options)
