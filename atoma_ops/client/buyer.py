"""The buyer's commands (``atoma-ops stack chat``, ``atoma-ops stack verify-response``): who the stack's node is,
from the chain, and a chat whose answer must be signed by it.

A node says who it is on ``GET /health`` (its address); the chain says whether that address holds the NodeBadge of
the node the stack was sold to. Only then is the node's signature worth checking: a server that signs with any
other key is refused, whatever it answers.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any, Callable

import httpx

from ..wallet import normalize_address
from .chat import AtomaClient, base_url, tls_verify
from .signing import RequestSigner
from .verify import ResponseSignatureError, StreamCheck, verify_response


class InvalidNodeUrl(ValueError):
    """A node URL that is not ``http(s)://HOST[:PORT]`` with a port from 1 to 65535 (bad input: nothing is sent)."""


class NodeUnreachable(ConnectionError):
    """Nothing answers at a node URL: nothing listens on the port, the host is unknown, or the connection timed out.
    Nothing was sent, so nothing was charged; retryable in the core taxonomy (a node may be starting)."""


class NotANode(ValueError):
    """Something answers at a node URL, but not as an Atoma node: ``GET /health`` names no node address."""


def node_root(url: str) -> str:
    """The node's root URL (``url`` without a trailing ``/v1``), checked to be one a client can connect to.

    Raises:
        InvalidNodeUrl: not ``http(s)://HOST[:PORT]``, or a port outside 1-65535.
    """
    root = base_url(url)
    try:
        parsed = httpx.URL(root)
    except httpx.InvalidURL as exc:
        raise InvalidNodeUrl(f"{url!r} is not a node URL ({exc})") from None
    if parsed.scheme not in ("http", "https") or not parsed.host or not (parsed.port is None or 0 < parsed.port < 65536):
        raise InvalidNodeUrl(f"{url!r} is not a node URL: http(s)://HOST[:PORT], the port 1-65535")
    return root


async def node_address(url: str, *, timeout: float = 60.0) -> str:
    """The address the node at ``url`` signs with, as it says on ``GET /health`` (not yet checked against the
    chain: :func:`node_of_stack` does that).

    Raises:
        InvalidNodeUrl, NodeUnreachable, NotANode.
    """
    root = node_root(url)
    try:
        async with httpx.AsyncClient(timeout=timeout, verify=tls_verify(root)) as http:
            response = await http.get(root + "/health")
    except httpx.TransportError as exc:
        raise NodeUnreachable(f"no node answers at {root} ({type(exc).__name__}: {exc})") from None
    try:
        return normalize_address(str(response.json()["address"]))
    except (ValueError, TypeError, KeyError):
        raise NotANode(
            f"{root} is not an Atoma node: GET /health answered HTTP {response.status_code} without a node address"
        ) from None


async def node_of_stack(chain: Any, stack: int, address: str) -> int:
    """The small id of the node ``stack`` was sold to, checked to be the NodeBadge ``address`` holds.

    Raises:
        ResponseSignatureError: no such stack, or ``address`` does not hold that node's badge.
    """
    facts = await chain.get_stack(stack)
    if facts is None:
        raise ResponseSignatureError(f"stack {stack} does not exist on this chain (or was claimed)")
    badges = await chain.badges(address)
    if not any(b.kind == "NodeBadge" and b.small_id == facts.selected_node_id for b in badges):
        raise ResponseSignatureError(
            f"{address} does not hold the NodeBadge of node {facts.selected_node_id}, the node stack {stack} was sold to"
        )
    return facts.selected_node_id


def _open_home(home: str | os.PathLike | None) -> Any:
    from ..home import LocalnetHome, resolve_home

    return LocalnetHome(resolve_home(home))


def chat(home: str | os.PathLike | None, url: str, stack: int, prompt: str, *, buyer: str | None = None,
         model: str | None = None, max_tokens: int | None = None, tx_digest: str | None = None, stream: bool = True,
         on_text: Callable[[str], Any] | None = None, timeout: float = 600.0) -> dict:
    """One chat request on ``stack`` at the node ``url``, signed by ``buyer`` (alias or address of the home's
    wallet; default its active address), answered by the stack's node and signed by it.

    Raises:
        NodeRefusal: the node refused (its status and error); ResponseSignatureError: the answer is not signed
        by the stack's node; WalletError: no such buyer key; InvalidNodeUrl, NodeUnreachable, NotANode: no node
        at ``url``; httpx.HTTPError: the connection failed later.
    """
    from ..wallet import Wallet

    local = _open_home(home)
    signer = RequestSigner(Wallet.load(local.client_yaml), buyer)
    root = node_root(url)
    claimed = asyncio.run(node_address(root, timeout=timeout))

    async def check() -> int:
        chain = local.open()
        try:
            return await node_of_stack(chain, stack, claimed)
        finally:
            await chain.close()

    node_small_id = asyncio.run(check())
    body: dict = {"messages": [{"role": "user", "content": prompt}]}
    if model is not None:
        body["model"] = model
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    with AtomaClient(root, signer, stack, tx_digest=tx_digest, node_address=claimed, timeout=timeout) as client:
        result = client.stream_chat(body, on_text) if stream else client.chat(body)
    if not stream and on_text is not None:
        on_text(result.content)
    return {**result.to_json(), "stack_small_id": stack, "node_small_id": node_small_id, "buyer": signer.address,
            "verified": True}


def verify_file(path: str | os.PathLike, *, home: str | os.PathLike | None = None, stack: int | None = None,
                node_address: str | None = None) -> dict:
    """Check a saved answer: a JSON response body, or a saved stream (``data: …`` lines or one chunk per line)
    whose final chunk is signed. With ``stack`` the signer must hold the NodeBadge of the stack's node (read from
    the home's chain); with ``node_address`` it must be that address.

    Raises:
        ResponseSignatureError: the answer is not signed, was changed after signing, or by another key.
        OSError: the file cannot be read.
    """
    text = Path(path).read_text(encoding="utf-8")
    try:
        chunks = _chunks(text)
    except ValueError:
        raise ResponseSignatureError(f"{path}: a line of the saved stream is not JSON") from None
    if chunks is None:
        try:
            body = json.loads(text)
        except ValueError:
            raise ResponseSignatureError(f"{path} is neither a JSON response body nor a saved stream") from None
        signer = verify_response(body, node_address)
        kind = "body"
    else:
        check = StreamCheck(None)
        for chunk in chunks:
            check.add(chunk)
        signer = check.verify(node_address)
        kind = "stream"
    doc: dict = {"file": str(path), "kind": kind, "signed_by": signer, "verified": True}
    if stack is not None:
        async def check_node() -> int:
            chain = _open_home(home).open()
            try:
                return await node_of_stack(chain, stack, signer)
            finally:
                await chain.close()

        doc.update(stack_small_id=stack, node_small_id=asyncio.run(check_node()))
    return doc


def _chunks(text: str) -> list[dict] | None:
    """The chunks of a saved stream (SSE ``data:`` lines, or JSON lines), or None when ``text`` is one document."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return None
    if any(line.startswith("data:") for line in lines):
        payloads = [line[5:].strip() for line in lines if line.startswith("data:")]
        return [json.loads(p) for p in payloads if p and p != "[DONE]"]
    if len(lines) > 1:
        try:
            return [json.loads(line) for line in lines]
        except ValueError:
            return None
    return None
