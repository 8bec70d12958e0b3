"""A small standalone buyer's client: one chat request, signed, its answer's signature checked.

``stream_chat`` relays the text as it comes (``on_text``) and checks the signed final chunk at the end; ``chat``
checks the signed body. Both raise :class:`NodeRefusal` for a refusal (the node's JSON error, its status and
whether to retry) and :class:`~atoma_ops.client.verify.ResponseSignatureError` for an answer the node did not sign.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable

import httpx

from .signing import RequestSigner, _headers
from .verify import ResponseSignatureError, StreamCheck, verify_response

CHAT_PATH = "/v1/chat/completions"


class NodeRefusal(ValueError):
    """The node refused the request: ``status`` (the Atoma node's codes), the error ``type`` and its fields (a
    ValueError: what was sent is what the node would not take)."""

    kind = "NodeRefusal"

    def __init__(self, status: int, error: dict, should_retry: bool):
        self.status = status
        self.error = error
        self.type = error.get("type", "")
        self.should_retry = should_retry
        super().__init__(f"HTTP {status} {self.type}: {error.get('message', '')}")

    def to_json(self) -> dict:
        return {"status": self.status, **self.error, "should_retry": self.should_retry}


@dataclass
class ChatResult:
    """An answer whose signature was checked: ``signer`` is the node address that signed it."""

    content: str
    signer: str
    payload_hash: bytes
    usage: dict | None
    finish_reason: str | None
    body: dict = field(repr=False)  # the JSON body, or the stream's signed final chunk
    headers: dict = field(default_factory=dict, repr=False)

    def to_json(self) -> dict:
        return {
            "content": self.content,
            "signed_by": self.signer,
            "payload_hash": "0x" + self.payload_hash.hex(),
            "usage": self.usage,
            "finish_reason": self.finish_reason,
            "atoma": self.body.get("atoma"),
            "compute_units": self.headers.get("x-compute-units"),
        }


def base_url(url: str) -> str:
    url = url.rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


def tls_verify(url: str) -> bool:
    """httpx's ``verify`` for ``url``: a plain ``http://`` node has no certificate to check, and loading the CA
    bundle for nothing costs ~150 ms per client (measured: a third of sending a 22-line workload on loopback)."""
    return not url.lower().startswith("http://")


def _refusal(response: httpx.Response, text: str) -> NodeRefusal:
    try:
        error = json.loads(text).get("error") or {}
    except (ValueError, AttributeError):
        error = {}
    if not isinstance(error, dict) or not error:
        error = {"type": "http_error", "message": text[:500]}
    return NodeRefusal(response.status_code, error, response.headers.get("x-should-retry") != "false")


class AtomaClient:
    """One buyer, one node, one stack.

    Args:
        url: the node's base URL (``http://127.0.0.1:8000``, with or without ``/v1``).
        signer: the stack owner's key.
        stack: the stack small id to spend.
        tx_digest: the purchase's digest, for a stack bought moments ago.
        node_address: the stack's node address; answers signed by any other key are refused (None: any signer
            is returned for the caller to check).
    """

    def __init__(self, url: str, signer: RequestSigner, stack: int, *, tx_digest: str | None = None,
                 node_address: str | None = None, timeout: float = 600.0, http: httpx.Client | None = None):
        self.url = base_url(url)
        self.signer = signer
        self.stack = stack
        self.tx_digest = tx_digest
        self.node_address = node_address
        self._own = http is None
        self.http = http or httpx.Client(timeout=timeout)

    def close(self) -> None:
        if self._own:
            self.http.close()

    def __enter__(self) -> "AtomaClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _post(self, body: dict) -> tuple[bytes, dict, bytes]:
        raw, signature, digest = self.signer.sign(body)
        headers = {"content-type": "application/json", **_headers(signature, self.stack, self.tx_digest)}
        return raw, headers, digest

    def chat(self, body: dict) -> ChatResult:
        """Send a non-streamed chat request (``stream`` forced off) and check the signed answer."""
        raw, headers, digest = self._post({**body, "stream": False} if body.get("stream") else body)
        r = self.http.post(self.url + CHAT_PATH, content=raw, headers=headers)
        if r.status_code != 200:
            raise _refusal(r, r.text)
        doc = r.json()
        signer = verify_response(doc, self.node_address)
        choice = (doc.get("choices") or [{}])[0]
        return ChatResult((choice.get("message") or {}).get("content") or "", signer, digest, doc.get("usage"),
                          choice.get("finish_reason"), doc, dict(r.headers))

    def stream_chat(self, body: dict, on_text: Callable[[str], Any] | None = None) -> ChatResult:
        """Send a streamed chat request, hand each text piece to ``on_text`` as it arrives, and check the signed
        final chunk against everything received."""
        raw, headers, digest = self._post({**body, "stream": True})
        check = StreamCheck(digest)
        finish: str | None = None
        with self.http.stream("POST", self.url + CHAT_PATH, content=raw, headers=headers) as r:
            if r.status_code != 200:
                raise _refusal(r, r.read().decode("utf-8", "replace"))
            for line in r.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[len("data: "):])
                if "error" in chunk and "choices" not in chunk:
                    raise NodeRefusal(500, chunk["error"], False)
                before = len(check.pieces)
                check.add(chunk)
                if on_text is not None:
                    for piece in check.pieces[before:]:
                        on_text(piece)
                for choice in chunk.get("choices") or ():
                    finish = choice.get("finish_reason") or finish
            response_headers = dict(r.headers)
        signer = check.verify(self.node_address)
        final = check.final or {}
        return ChatResult(check.content, signer, digest, final.get("usage"), finish, final, response_headers)


__all__ = ["AtomaClient", "ChatResult", "NodeRefusal", "ResponseSignatureError"]
