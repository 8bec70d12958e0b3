"""The ``openai`` engine's connections to its server (``vllm serve``), on aiohttp.

Why aiohttp: the node relays every request it serves, token by token, to the engine's server, and at a few hundred
concurrent streams httpx/httpcore (their pool, anyio's streams, h11 in pure Python) were over half of the node's CPU
per request. aiohttp is the field's asyncio HTTP client (C parser, llhttp; vLLM's own benchmark client uses it) and
costs a fraction of that. httpx stays for the synchronous ``/tokenize`` calls of the :class:`~.base.Engine`
interface (:mod:`.openai_tokens`).

What the engine relies on here:

- **One session per engine and event loop** (:func:`open_session`), its connections kept alive between requests.
  Streams are bounded by the engine's semaphore (``max_concurrency``); the connector allows twice that, so the
  admission's ``/tokenize`` calls never wait behind running streams for a connection.
- **Idle connections are dropped after** ``KEEPALIVE_S`` (4 s), before the server drops them (uvicorn's and vLLM's
  ``--timeout-keep-alive`` is 5 s): aiohttp resends no POST on a kept connection the server closed meanwhile.
- **Timeouts**: ``timeout`` seconds to connect, and the server may stay silent at most ``timeout`` seconds while an
  answer is awaited, before its first byte or between two chunks (aiohttp's ``sock_read``). No total bound: a
  stream lasts as long as the answer takes.
- **Direct connections only** (``trust_env=False``: ``HTTP_PROXY`` is not read, as the node's relay never did),
  no redirects followed.
- **Errors** (:data:`RETRYABLE`, :data:`TIMEOUTS`, :data:`TRANSPORT`, shared with httpx's for the synchronous
  calls): a connection that could not be opened, was refused, reset, or closed by the server before the answer's
  end may be tried again (nothing was relayed yet: the caller decides); a silent server is a timeout, never retried.
- **Closing early**: ``response.close()`` closes the connection at once, so the server sees the client go (vLLM
  then aborts the request); a body read to its end gives its connection back to the session.
"""

from __future__ import annotations

import json
import ssl

import aiohttp
import httpx

try:
    import orjson
except ImportError:  # the vLLM environment runs the engines without it (docs/engines.md): the standard library
    orjson = None  # type: ignore[assignment]

#: seconds an idle connection is kept: under the 5 s after which uvicorn (so ``vllm serve``) closes it
KEEPALIVE_S = 4.0

#: failures after which the request cannot have been served: it may be sent again
RETRYABLE = (
    httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError, httpx.ReadError,
    aiohttp.ClientConnectorError,  # refused, unreachable, TLS failed
    aiohttp.ConnectionTimeoutError,  # no connection within the timeout
    aiohttp.ServerDisconnectedError,  # closed before (or while) answering
    aiohttp.ClientOSError,  # reset while sending or reading
    aiohttp.ClientPayloadError,  # the body broke before its end
    aiohttp.ClientResponseError,  # what came back is not HTTP/1.1
)
#: the server stayed silent too long (a connect timeout is in RETRYABLE, checked first)
TIMEOUTS = (httpx.TimeoutException, aiohttp.ServerTimeoutError)
#: every transport failure of either client
TRANSPORT = (httpx.HTTPError, aiohttp.ClientError)


def open_session(*, headers: dict[str, str], timeout: float, max_streams: int,
                 ssl_context: ssl.SSLContext | None) -> aiohttp.ClientSession:
    """A session for the running event loop (see the module doc). Close it with ``await session.close()``."""
    connector = aiohttp.TCPConnector(
        limit=2 * max_streams,  # streams are bounded at max_streams by the caller; the rest for /tokenize
        limit_per_host=0,
        force_close=False,
        keepalive_timeout=KEEPALIVE_S,
        ssl=ssl_context if ssl_context is not None else True,
    )
    return aiohttp.ClientSession(
        connector=connector,
        headers={**headers, "Content-Type": "application/json"},  # every request is a JSON POST
        timeout=aiohttp.ClientTimeout(total=None, connect=None, sock_connect=timeout, sock_read=timeout),
        trust_env=False,
        auto_decompress=True,
    )


def loads(data: bytes | str):
    """JSON text to Python (orjson where installed). Raises ValueError on bad JSON."""
    return orjson.loads(data) if orjson is not None else json.loads(data)


def dumps(body: dict) -> bytes:
    """Python to compact JSON bytes (orjson where installed; the standard library for what orjson refuses, such as
    an integer past 64 bits)."""
    if orjson is not None:
        try:
            return orjson.dumps(body)
        except TypeError:  # orjson's JSONEncodeError
            pass
    return json.dumps(body, separators=(",", ":")).encode()


class Answer:
    """A response read whole (an error's body, a ``/tokenize`` answer), with the reading interface of an
    ``httpx.Response`` that the error and token-count code shares with the synchronous client."""

    __slots__ = ("status_code", "content", "reason_phrase")

    def __init__(self, status_code: int, content: bytes, reason: str | None = None):
        self.status_code = status_code
        self.content = content
        self.reason_phrase = reason or f"HTTP {status_code}"

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def json(self):
        return loads(self.content)


async def read_whole(response: aiohttp.ClientResponse) -> Answer:
    """Read ``response`` to its end (its connection then goes back to the session) as an :class:`Answer`."""
    try:
        content = await response.read()
    finally:
        response.release()
    return Answer(response.status, content, response.reason)
