"""Reading a node's data over HTTP from another host: its served usage (the ledger's import) and a stack's history
export (attesters). Each request is a ``GET`` signed by the reader (``protocol.node_reads``: a Sui signature over
the method, path, query, the node's address and a timestamp); the node answers only its operator (usage) or the
operator, the stack's owner and its requested attesters (history).

::

    async with NodeDataClient("http://gpu-a:8000", RequestSigner(wallet, "node-a")) as node:
        async for page in node.usage_pages(after=cursor):
            ...                                   # page["rows"], page["next"], page["feed"]
        lines = await node.history_lines(42)      # the JSONL of ``stack history --export``

A signer is anything with ``address`` and ``sign_hash(digest) -> str``: a :class:`RequestSigner` from a wallet, or
a running ``NodeService`` (an attester reads with its node's key). Nothing here imports the node's serving code.
"""

from __future__ import annotations

import time
from typing import Any, AsyncIterator, Protocol

import httpx

from ..protocol.node_http import SIGNATURE_HEADER
from .buyer import node_root
from ..protocol.node_reads import DEFAULT_LIMIT, HISTORY_PATH, TIMESTAMP_HEADER, USAGE_PATH, read_hash


class Reader(Protocol):
    address: str

    def sign_hash(self, digest: bytes) -> str: ...


class NodeDataError(Exception):
    """The node refused a read (``status`` and ``type`` from its JSON error body) or could not be reached
    (``status`` None, ``type`` ``"unreachable"``)."""

    def __init__(self, message: str, *, status: int | None, type: str, url: str):
        super().__init__(message)
        self.status, self.type, self.url = status, type, url

    @property
    def kind(self) -> str:  # the CLI's error "kind"
        return "NodeDataError"


class NodeDataClient:
    """Signed reads of one node (``base_url``: where ``atoma-ops node serve`` listens, e.g. ``http://host:8000``).

    Raises:
        InvalidNodeUrl: ``base_url`` is not ``http(s)://HOST[:PORT]``.

    Args:
        signer: who reads (its address must be one the node lets read).
        node_address: the node's address, which every signature names; default: asked once of ``GET /health``.
        timeout: seconds per HTTP request.
    """

    def __init__(self, base_url: str, signer: Reader, *, node_address: str | None = None, timeout: float = 60.0,
                 transport: httpx.AsyncBaseTransport | None = None):
        self.base_url = node_root(base_url)  # InvalidNodeUrl before anything is sent
        self.signer = signer
        self._node_address = node_address
        self._http = httpx.AsyncClient(base_url=self.base_url, timeout=timeout, transport=transport)

    async def __aenter__(self) -> "NodeDataClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _send(self, path: str, headers: dict | None = None, params: dict | None = None) -> httpx.Response:
        try:
            response = await self._http.get(path, headers=headers, params=params)
        except httpx.HTTPError as exc:
            raise NodeDataError(f"the node at {self.base_url} cannot be reached: {type(exc).__name__}: {exc}",
                                status=None, type="unreachable", url=self.base_url) from None
        if response.status_code != 200:
            try:
                error = response.json()["error"]
                type_, message = str(error["type"]), str(error["message"])
            except (ValueError, KeyError, TypeError):
                type_, message = "http_error", response.text[:200]
            raise NodeDataError(f"{self.base_url}{path}: {response.status_code} {type_}: {message}",
                                status=response.status_code, type=type_, url=self.base_url)
        return response

    async def health(self) -> dict:
        """The node's ``GET /health`` (unsigned): its small id and address."""
        return (await self._send("/health")).json()

    async def node_address(self) -> str:
        if self._node_address is None:
            self._node_address = str((await self.health())["address"])
        return self._node_address

    async def get(self, path: str, query: dict[str, Any] | None = None) -> httpx.Response:
        """A signed ``GET`` of ``path`` with ``query`` (values sent and signed as strings)."""
        params = {k: str(v) for k, v in (query or {}).items()}
        stamp = int(time.time() * 1000)
        digest = read_hash("GET", path, params, await self.node_address(), stamp)
        headers = {SIGNATURE_HEADER: self.signer.sign_hash(digest), TIMESTAMP_HEADER: str(stamp)}
        return await self._send(path, headers, params)

    async def usage_page(self, after: int = 0, limit: int = DEFAULT_LIMIT) -> dict:
        """One page of served usage: ``{"node_small_id", "node", "feed", "after", "next", "has_more", "rows"}``;
        each row: ``seq``, ``stack_small_id``, ``request_index``, ``request_id``, ``prompt_tokens``,
        ``completion_tokens``, ``estimated_units``, ``actual_units``, ``payload_hash``, ``response_hash`` (0x hex),
        ``served_at_ms``, ``arrived_ms``, ``first_token_ms``."""
        return (await self.get(USAGE_PATH, {"after": after, "limit": limit})).json()

    async def usage_pages(self, after: int = 0, limit: int = DEFAULT_LIMIT) -> AsyncIterator[dict]:
        """Pages from cursor ``after`` until the node has no more (at least one page, maybe with no rows)."""
        while True:
            page = await self.usage_page(after, limit)
            yield page
            if not page["has_more"] or not page["rows"]:
                return
            after = int(page["next"])

    async def history_lines(self, stack_small_id: int) -> list[str]:
        """The stack's history export as its non-empty JSONL lines (header first; verify them with
        ``serving.history.parse_jsonl``)."""
        response = await self.get(HISTORY_PATH.format(stack_small_id=int(stack_small_id)))
        return [line for line in (raw.strip() for raw in response.text.splitlines()) if line]
