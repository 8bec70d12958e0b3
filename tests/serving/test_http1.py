"""The openai engine's HTTP/1.1 client (engines/http1.py) against raw asyncio servers on 127.0.0.1 that answer with
exactly the bytes each case needs: bodies by length, chunked and by the connection's end, keep-alive reuse, a kept
connection the server closed, a silent server, nobody listening."""

from __future__ import annotations

import asyncio
import socket

import httpx
import pytest

from atoma_ops.serving.engines.http1 import Http1Pool


async def serve(answers):
    """A server answering its n-th request with ``answers[n]`` (bytes, then it keeps the connection; or
    ``(bytes, "close")``; or None: say nothing). Returns (server, url, seen) where ``seen`` lists (connection
    number, request head)."""
    seen: list[tuple[int, bytes]] = []
    connections = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        number = connections
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                                  if line.lower().startswith(b"content-length")))
                await reader.readexactly(length)
                seen.append((number, head))
                answer = answers[len(seen) - 1]
                if answer is None:
                    await asyncio.sleep(30)
                    return
                data, close = answer if isinstance(answer, tuple) else (answer, None)
                writer.write(data)
                await writer.drain()
                if close:
                    writer.close()
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            pass

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}", seen


def test_bodies_by_length_chunked_and_by_close_and_the_connection_is_reused():
    async def run():
        server, url, seen = await serve([
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 7\r\n\r\n{\"a\":1}",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\ndata:\r\n3\r\n x\n\r\n0\r\n\r\n",
            (b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\n\r\nbusy, try later", "close"),
        ])
        async with server:
            pool = Http1Pool(url, headers={"Authorization": "Bearer k"}, timeout=5)
            first = await pool.post("/v1/x", {"q": 1})
            assert first.status_code == 200 and first.headers.get("Content-Type") == "application/json"
            assert await first.aread() == b'{"a":1}' and first.json() == {"a": 1}
            await first.aclose()
            second = await pool.post("/v1/x", b'{"q":2}')
            assert [piece async for piece in second.aiter_bytes()] in ([b"data: x\n"], [b"data:", b" x\n"])
            await second.aclose()
            third = await pool.post("/v1/x", {"q": 3})
            assert third.status_code == 503 and await third.aread() == b"busy, try later"
            await third.aclose()
            await pool.aclose()
        assert [n for n, _ in seen] == [1, 1, 1]  # one connection, kept alive across the three
        assert all(b"POST /v1/x HTTP/1.1" in head and b"Authorization: Bearer k" in head for _, head in seen)

    asyncio.run(run())


def test_a_kept_connection_the_server_closed_is_not_reused():
    async def run():
        ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        server, url, seen = await serve([(ok, "close"), ok])  # closes after answering, without saying so
        async with server:
            pool = Http1Pool(url, timeout=5)
            for _ in range(2):
                response = await pool.post("/", {})
                assert await response.aread() == b"ok"
                await response.aclose()
                await asyncio.sleep(0.05)  # the close reaches the client
            await pool.aclose()
        assert [n for n, _ in seen] == [1, 2]

    asyncio.run(run())


def test_closing_mid_body_closes_the_connection_and_a_silent_server_times_out():
    async def run():
        server, url, seen = await serve([b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial", None])
        async with server:
            pool = Http1Pool(url, timeout=0.5)
            response = await pool.post("/", {})
            pieces = response.aiter_bytes()
            assert await pieces.__anext__() == b"partial"
            await pieces.aclose()
            await response.aclose()  # mid-body: not reusable, closed
            assert not pool._idle
            with pytest.raises(httpx.ReadTimeout):
                await pool.post("/", {})  # a new connection; the server never answers
            await pool.aclose()
        assert [n for n, _ in seen] == [1, 2]

    asyncio.run(run())


def test_nobody_listening_is_a_connect_error_and_a_broken_body_a_read_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connections are refused

    async def run():
        with pytest.raises(httpx.ConnectError):
            await Http1Pool(f"http://127.0.0.1:{port}", timeout=2).post("/", {})
        server, url, _ = await serve([(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", "close")])
        async with server:
            pool = Http1Pool(url, timeout=2)
            response = await pool.post("/", {})
            with pytest.raises(httpx.ReadError):
                await response.aread()
            await response.aclose()
            await pool.aclose()

    asyncio.run(run())
