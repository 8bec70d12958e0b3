"""A lean HTTP/1.1 client for the node's upstream relay: keep-alive connections on asyncio, parsed by httptools.

Why not httpx here: the node relays every request it serves to the engine's server (``vllm serve``), and at a few
hundred concurrent streams httpx/httpcore (their pool, anyio's streams, h11 in pure Python) were over half of the
node's CPU per request. This does only what that relay needs — one origin, POST a body, read the answer as it
comes, keep the connection for the next request — with httptools (uvicorn's C parser, already a dependency of the
server) and asyncio protocols, at a fraction of the cost.

What it does, and what the engine relies on:

- **Connections**: one :class:`Http1Pool` per origin and event loop; a request takes an idle connection (the most
  recently used) or opens one; a response read to its end gives its connection back unless either side said
  ``Connection: close``. The caller bounds concurrency (the engine's semaphore); ``max_idle`` connections are kept.
- **Errors** are httpx's exception types, so a caller's retry rule is the one it has for httpx:
  ``ConnectError``/``ConnectTimeout`` (nothing sent), ``RemoteProtocolError`` (the server closed the connection
  before a response, or sent something that is not HTTP), ``ReadError`` (the connection broke mid-body),
  ``ReadTimeout`` (silent for ``timeout`` seconds while a response was awaited). A kept-alive connection the server
  closed before answering is retried once on a fresh one (the server closes idle connections when it likes).
- **Bodies**: ``Content-Length``, chunked, or read until the server closes; :meth:`Response.aiter_bytes` yields
  what arrived since the last read in one piece; reading pauses the socket past ``MAX_BUFFER`` bytes unread.
- **Closing early** (:meth:`Response.aclose` before the end): the connection is closed at once, so the server sees
  the client go (vLLM then aborts the request).
- Direct connections only: no proxy (``HTTP_PROXY`` is not read), no redirects, no HTTP/2.
"""

from __future__ import annotations

import asyncio
import collections
import json
import ssl as ssl_module
from typing import AsyncIterator
from urllib.parse import urlsplit

import httptools
import httpx

try:
    import orjson
except ImportError:  # the vLLM environment runs the engines without it (docs/engines.md): the standard library
    orjson = None  # type: ignore[assignment]

#: unread body bytes past which the socket stops being read until the consumer catches up
MAX_BUFFER = 1 << 20


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection and the response being read on it."""

    __slots__ = ("pool", "transport", "parser", "closed", "response", "reused", "paused")

    def __init__(self, pool: "Http1Pool") -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.response: Response | None = None
        self.reused = False
        self.paused = False

    # -- asyncio protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        response = self.response
        if response is None:  # bytes on an idle connection: the server is not speaking HTTP/1.1 to us
            self.close()
            return
        response.received = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            response._fail(httpx.RemoteProtocolError("the server switched protocols"))
            self.close()
        except httptools.HttpParserError as exc:
            response._fail(httpx.RemoteProtocolError(f"the server's answer is not HTTP/1.1: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool._open.discard(self)
        response = self.response
        if response is not None:
            response._eof(exc)

    def pause_writing(self) -> None:  # a request body is one write; nothing to throttle
        pass

    def resume_writing(self) -> None:
        pass

    # -- httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self.response.raw_headers.append((name, value))  # type: ignore[union-attr]

    def on_headers_complete(self) -> None:
        response = self.response
        response.status_code = self.parser.get_status_code()  # type: ignore[union-attr]
        if 100 <= response.status_code < 200:  # type: ignore[union-attr]
            response.raw_headers.clear()  # type: ignore[union-attr]  # an interim answer: the real one follows
            return
        response._headers_done()  # type: ignore[union-attr]

    def on_body(self, body: bytes) -> None:
        response = self.response
        response._chunks.append(body)  # type: ignore[union-attr]
        response._buffered += len(body)  # type: ignore[union-attr]
        if response._buffered > MAX_BUFFER and not self.paused:  # type: ignore[union-attr]
            self.paused = True
            self.transport.pause_reading()  # type: ignore[union-attr]
        response._wake()  # type: ignore[union-attr]

    def on_message_complete(self) -> None:
        response = self.response
        if response is None or response.status_code < 200:
            return
        response.complete = True
        response.keep_alive = self.parser.should_keep_alive()
        response._wake()

    # -- ours
    def resume(self) -> None:
        if self.paused and not self.closed:
            self.paused = False
            self.transport.resume_reading()  # type: ignore[union-attr]

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class Headers(dict):
    """Response headers by lower-case name (repeated ones joined with ``, ``)."""

    def get(self, key: str, default=None):  # type: ignore[override]
        return super().get(key.lower(), default)


class Response:
    """A response whose body is read as it comes (:meth:`aiter_bytes`) or whole (:meth:`aread`)."""

    __slots__ = ("status_code", "raw_headers", "headers", "complete", "keep_alive", "received", "_pool", "_conn",
                 "_chunks", "_buffered", "_waiter", "_error", "_head", "_content", "_closed", "_timeout")

    def __init__(self, pool: "Http1Pool", conn: _Connection, timeout: float):
        self.status_code = 0
        self.raw_headers: list[tuple[bytes, bytes]] = []
        self.headers = Headers()
        self.complete = False
        self.keep_alive = False
        self.received = False
        self._pool = pool
        self._conn = conn
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._waiter: asyncio.Future | None = None
        self._error: Exception | None = None
        self._head = False
        self._content: bytes | None = None
        self._closed = False
        self._timeout = timeout

    # -- fed by the connection
    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _headers_done(self) -> None:
        headers = self.headers
        for name, value in self.raw_headers:
            key, text = name.decode("latin-1").lower(), value.decode("latin-1")
            headers[key] = f"{headers[key]}, {text}" if key in headers else text
        self._head = True
        self._wake()

    def _fail(self, error: Exception) -> None:
        if self._error is None:
            self._error = error
        self._wake()

    def _eof(self, exc: Exception | None) -> None:
        if self.complete:
            return
        if self._head and "content-length" not in self.headers and "chunked" not in self.headers.get(
            "transfer-encoding", ""
        ):
            self.complete = True  # a body delimited by the connection's end
        elif not self._head:
            self._fail(httpx.RemoteProtocolError(
                "the server closed the connection without sending a response"
                + (f" ({type(exc).__name__}: {exc})" if exc else "")
            ))
        else:
            self._fail(httpx.ReadError(
                "the connection broke before the response's end" + (f" ({type(exc).__name__}: {exc})" if exc else "")
            ))
        self._wake()

    async def _wait(self, what: str) -> None:
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        timer = loop.call_later(self._timeout, _expire, waiter, what)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None

    async def _read_head(self) -> None:
        while not self._head:
            if self._error is not None:
                raise self._error
            await self._wait(f"no response within {self._timeout} s")

    # -- the caller's side
    @property
    def reason_phrase(self) -> str:
        return f"HTTP {self.status_code}"

    async def aiter_bytes(self) -> AsyncIterator[bytes]:
        """The body as it comes: everything that arrived since the last piece, in one piece."""
        if self._content is not None:
            if self._content:
                yield self._content
            return
        conn = self._conn
        while True:
            chunks = self._chunks
            if chunks:
                piece = chunks[0] if len(chunks) == 1 else b"".join(chunks)
                chunks.clear()
                self._buffered = 0
                conn.resume()
                yield piece
                continue
            if self.complete:
                self._finished()
                return
            if self._error is not None:
                raise self._error
            await self._wait(f"the server sent nothing for {self._timeout} s")

    async def aread(self) -> bytes:
        if self._content is None:
            self._content = b"".join([piece async for piece in self.aiter_bytes()])
        return self._content

    @property
    def text(self) -> str:
        return (self._content or b"").decode("utf-8", "replace")

    def json(self):
        return loads(self._content or b"")

    def _finished(self) -> None:
        """The body was read to its end: the connection goes back to the pool (or is closed)."""
        if self._closed:
            return
        self._closed = True
        conn, self._conn.response = self._conn, None
        if self.keep_alive and not conn.closed and not conn.paused:
            self._pool._release(conn)
        else:
            conn.close()

    async def aclose(self) -> None:
        if self._closed:
            return
        if self.complete and self._error is None:
            self._finished()
            return
        self._closed = True
        self._conn.response = None
        self._conn.close()  # mid-body: the server sees the client go


def _expire(waiter: asyncio.Future, what: str) -> None:
    if not waiter.done():
        waiter.set_exception(httpx.ReadTimeout(what))


class Http1Pool:
    """Keep-alive connections to one origin (``http://host:port`` or ``https://…``), for one event loop.

    Args:
        base_url: the origin (a path in it is ignored: :meth:`post` takes the path).
        headers: sent with every request (e.g. ``Authorization``).
        timeout: seconds to connect, and seconds the server may stay silent while an answer is awaited.
        ssl_context: for https (the default context when None).
        max_idle: idle connections kept.
    """

    def __init__(self, base_url: str, *, headers: dict[str, str] | None = None, timeout: float = 120.0,
                 ssl_context: ssl_module.SSLContext | None = None, max_idle: int = 256):
        url = urlsplit(base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.host = url.hostname
        self.port = url.port or (443 if url.scheme == "https" else 80)
        self.ssl = (ssl_context or ssl_module.create_default_context()) if url.scheme == "https" else None
        default_port = self.port == (443 if url.scheme == "https" else 80)
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.authority = host if default_port else f"{host}:{self.port}"
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self._fixed = f"Host: {self.authority}\r\nAccept: */*\r\nUser-Agent: atoma-ops\r\n{extra}".encode("latin-1")
        self.timeout = timeout
        self.max_idle = max_idle
        self._idle: list[_Connection] = []
        self._open: set[_Connection] = set()
        self.is_closed = False

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(lambda: _Connection(self), self.host, self.port, ssl=self.ssl,
                                       server_hostname=self.host if self.ssl else None),
                self.timeout,
            )
        except asyncio.TimeoutError:
            raise httpx.ConnectTimeout(f"cannot connect to {self.authority} within {self.timeout} s") from None
        except (OSError, ssl_module.SSLError) as exc:
            raise httpx.ConnectError(f"cannot connect to {self.authority}: {exc}") from None
        self._open.add(conn)
        return conn

    def _release(self, conn: _Connection) -> None:
        if self.is_closed or len(self._idle) >= self.max_idle:
            conn.close()
            return
        conn.reused = True
        self._idle.append(conn)

    def _take(self) -> _Connection | None:
        idle = self._idle
        while idle:
            conn = idle.pop()
            if not conn.closed:
                return conn
        return None

    async def post(self, path: str, body: dict | bytes, headers: dict[str, str] | None = None) -> Response:
        """Send ``POST path`` with a JSON body (a dict, serialised here, or the bytes) and wait for the response's
        status and headers; read its body from the returned :class:`Response`, then close it."""
        if self.is_closed:
            raise httpx.ConnectError("the connection pool is closed")
        payload = body if isinstance(body, bytes) else _dumps(body)
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items()).encode("latin-1")
        head = (b"POST " + path.encode("ascii") + b" HTTP/1.1\r\n" + self._fixed + extra
                + b"Content-Type: application/json\r\nContent-Length: " + str(len(payload)).encode() + b"\r\n\r\n")
        message = head + payload
        for _ in range(2):
            conn = self._take() or await self._connect()
            response = Response(self, conn, self.timeout)
            conn.response = response
            conn.transport.write(message)  # type: ignore[union-attr]
            try:
                await response._read_head()
            except httpx.RemoteProtocolError:
                conn.close()
                if conn.reused and not response.received:  # a kept connection the server had closed: once more
                    continue
                raise
            except BaseException:
                conn.close()
                raise
            return response
        raise AssertionError("unreachable")  # pragma: no cover

    async def aclose(self) -> None:
        self.is_closed = True
        for conn in list(self._open):
            conn.close()
        self._open.clear()
        self._idle.clear()


def loads(data: bytes | str):
    """JSON text to Python (orjson where installed). Raises ValueError on bad JSON."""
    return orjson.loads(data) if orjson is not None else json.loads(data)


def _dumps(body: dict) -> bytes:
    if orjson is not None:
        try:
            return orjson.dumps(body)
        except TypeError:  # orjson's JSONEncodeError: an integer past 64 bits, say; the standard library writes it
            pass
    return json.dumps(body, separators=(",", ":")).encode()
