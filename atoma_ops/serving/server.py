"""The node's OpenAI-compatible HTTP server (FastAPI + uvicorn).

- ``POST /v1/chat/completions`` with the stack in header ``X-Stack-Small-Id`` (and optionally ``X-Request-Id``, an
  idempotency key: a request id the stack already served answers its recorded response, charged once, and one it
  finally refused its recorded refusal; either carries ``Idempotent-Replayed: true``). Admission
  (validate, stack, model, estimate, reserve) decides every refusal before any inference; then the engine runs the
  request as soon as it can (no batch barrier: serve.py), and the charge and the history append happen when it ends.
  - ``stream: false``: the OpenAI ``chat.completion`` body; headers ``X-Compute-Units`` (charged),
    ``X-Stack-Units-Left`` and ``X-History-Index`` say what it cost.
  - ``stream: true``: OpenAI's server-sent events as the engine produces (the text produced since the last write
    goes as one chunk, the first token at once); usage is always
    sent in a final chunk (``stream_options.include_usage`` forced, as the Atoma node does) with an ``atoma`` object
    (compute units charged, units left, history index); keep-alive comments while the engine is silent. A client
    that drops the stream stops generation and is charged what was produced.
- ``GET /v1/models``, ``GET /health``, ``GET /metrics`` (Prometheus), ``GET /v1/stacks/{id}/usage``.
- Signed reads for other hosts (node_data.py): ``GET /v1/node/usage`` (the served requests, paged by a cursor) and
  ``GET /v1/stacks/{id}/history`` (a stack's history export).

Every refusal is a JSON body ``{"error": {"type": …, "message": …}}`` with its status (docs/serving.md lists them);
a final one carries ``x-should-retry: false`` so OpenAI SDKs do not send it again, and 429 carries ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import socket
import threading
import time
from typing import Any, AsyncIterator, Callable

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..protocol.constants import U64_MAX
from ..protocol.node_http import (
    REPLAYED_HEADER,
    REQUEST_ID_HEADER,
    RESPONSE_HASH_KEY,
    SIGNATURE_HEADER,
    SIGNATURE_KEY,
    STACK_HEADER,
    TX_DIGEST_HEADER,
    BodyError,
    blake2b256,
    body_hash,
    parse_body,
    response_body_hash,
)
from ..wallet import InvalidSignatureError, MalformedSignatureError, parse_signature, verify_hash_signature
from .metering import (
    BadRequest,
    BadSignature,
    MissingSignature,
    MissingStack,
    Overloaded,
    RecordedRefusal,
    ServingError,
    StackNotFound,
    StackNotServedHere,
)
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .node import NodeService
from .serve import Outcome, RequestRun, now_ms

log = logging.getLogger("atoma_ops.serving.server")

#: the largest request body the node reads (a chat request is kilobytes; more is refused before it is read)
MAX_BODY_BYTES = 4 * 1024 * 1024
#: seconds of engine silence before a keep-alive comment on a stream (the Atoma node sends one every 15 s)
KEEPALIVE_S = 15.0


def error_response(status: int, type_: str, message: str, **fields: Any) -> JSONResponse:
    return JSONResponse({"error": {"type": type_, "message": message, **fields}}, status_code=status)


def _from_error(exc: ServingError) -> JSONResponse:
    headers = {}
    if exc.final:
        headers["x-should-retry"] = "false"
    if "retry_after_s" in exc.fields:
        headers["Retry-After"] = str(exc.fields["retry_after_s"])
    if isinstance(exc, RecordedRefusal):
        headers[REPLAYED_HEADER] = "true"
    return JSONResponse({"error": exc.to_json()}, status_code=exc.status, headers=headers)


def _sse(doc: dict) -> bytes:
    return b"data: " + orjson.dumps(doc) + b"\n\n"


def _chunk(run: RequestRun, delta: dict, finish_reason: str | None = None, continuous: bool = False) -> dict:
    """A ``chat.completion.chunk``; with ``continuous`` (``stream_options.continuous_usage_stats``, as vLLM) it
    carries the usage so far."""
    usage = None
    if continuous:
        gen = run.generation
        usage = {"prompt_tokens": gen.prompt_tokens, "completion_tokens": gen.completion_tokens,
                 "total_tokens": gen.prompt_tokens + gen.completion_tokens}
    return {
        "id": run.id,
        "object": "chat.completion.chunk",
        "created": run.created,
        "model": run.model,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
        "usage": usage,
    }


def _cost(outcome: Outcome, payload: bytes, content: str) -> dict:
    return {
        "compute_units": outcome.units,
        "stack_units_left": outcome.units_left,
        "history_index": outcome.history_index,
        "duplicate": outcome.duplicate,
        # what the final chunk's signature binds besides the cost: the request (the hash its buyer signed) and
        # every content piece streamed before it
        "payload_hash": base64.b64encode(payload).decode(),
        "content_hash": base64.b64encode(blake2b256(content.encode("utf-8"))).decode(),
    }


def signed(service: NodeService, body: dict) -> dict:
    """``body`` with ``response_hash`` and ``signature`` (the node's wallet key over that hash), as the Atoma node
    signs every response body and a stream's final chunk."""
    digest = response_body_hash(body)
    return {**body, RESPONSE_HASH_KEY: base64.b64encode(digest).decode(), SIGNATURE_KEY: service.sign_hash(digest)}


class Last(bytes):
    """The last piece of an :class:`EventStream`: sent with the end of the body, in one write."""


class EventStream(StreamingResponse):
    """A server-sent event stream that tells ``on_disconnect`` as soon as the client goes.

    Starlette's StreamingResponse watches for the client going with an anyio task group per response (cancel
    scopes, task handles: measured ~10% of the node's CPU per streamed request); one plain task waiting on
    ``receive`` does it here. Sends after the client went are no-ops (uvicorn's), so the stream's generator runs to
    its end undisturbed: the run it relays, told at once, stops its engine and records what was produced. A piece
    marked :class:`Last` ends the body with it (one socket write less per request)."""

    def __init__(self, content: AsyncIterator[bytes], *, on_disconnect: Callable[[], None] | None = None,
                 headers: dict | None = None):
        super().__init__(content, media_type="text/event-stream", headers=headers)
        self._on_disconnect = on_disconnect

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        watcher = asyncio.get_running_loop().create_task(_when_disconnected(receive, self._on_disconnect))
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            last = b""
            async for piece in self.body_iterator:
                if isinstance(piece, Last):
                    last = piece
                    break
                await send({"type": "http.response.body", "body": piece, "more_body": True})
            await send({"type": "http.response.body", "body": bytes(last), "more_body": False})
        finally:
            watcher.cancel()
            await self.body_iterator.aclose()  # type: ignore[attr-defined]


async def _when_disconnected(receive: Any, callback: Callable[[], None] | None) -> None:
    """Call ``callback`` once the client disconnects (the request body was read whole: the next ASGI message is the
    disconnect; after a response's last send uvicorn answers disconnect too, and the callback is then harmless)."""
    while (await receive())["type"] != "http.disconnect":
        pass
    if callback is not None:
        callback()


async def sse_stream(run: RequestRun, keepalive_s: float, payload: bytes) -> AsyncIterator[bytes]:
    """The SSE body of a streamed request. Whatever ends it (the client going away included), the run is told,
    and its own task charges and records what was produced."""
    service = run.service
    continuous = bool((run.admission.request.get("stream_options") or {}).get("continuous_usage_stats"))
    try:
        # the role chunk goes with whatever is sent first (the first tokens, a keep-alive, the end): one write less
        head = _sse(_chunk(run, {"role": "assistant", "content": ""}))
        content: list[str] = []
        async for batch in run.batches(keepalive_s):
            if batch is None:
                yield head + b": keep-alive\n\n"
                head = b""
                continue
            # what the engine produced since the last write, as one chunk (as vLLM's --stream-interval does): a relayed
            # server's chunks that arrive together cost one JSON encoding and one chunk for the client to parse
            text = "".join(d.text for d in batch)
            if text:
                content.append(text)
                yield head + _sse(_chunk(run, {"content": text}, continuous=continuous))
                head = b""
        outcome = await run.result()
        if outcome.error is not None:
            yield Last(head + _sse({"error": outcome.error.to_json()}))
            return
        usage = outcome.response["usage"]  # type: ignore[index]
        finish = outcome.response["choices"][0]["finish_reason"]  # type: ignore[index]
        yield Last(head + _sse(_chunk(run, {}, finish, continuous)) + _sse(signed(service, {
            "id": run.id, "object": "chat.completion.chunk", "created": run.created, "model": run.model,
            "choices": [], "usage": usage, "atoma": _cost(outcome, payload, "".join(content)),
        })) + b"data: [DONE]\n\n")
    finally:
        run.abort()


async def recorded_stream(service: NodeService, outcome: Outcome, payload: bytes) -> AsyncIterator[bytes]:
    """A streamed request whose request id was served before: its recorded answer as one content chunk."""
    response = outcome.response or {}
    rid, created, model = response.get("id", ""), response.get("created", int(time.time())), response.get("model")
    base = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model, "usage": None}
    choice = response["choices"][0]
    content = choice["message"]["content"] or ""
    yield _sse({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": content},
                                      "logprobs": None, "finish_reason": None}]})
    yield _sse({**base, "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": choice["finish_reason"]}]})
    yield _sse(signed(service, {**base, "choices": [], "usage": response.get("usage"),
                                "atoma": _cost(outcome, payload, content)}))
    yield b"data: [DONE]\n\n"


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused (400, as the Atoma node refuses a body it cannot read) past ``limit`` bytes
    before more than that is read."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.strip().isdigit() and int(declared) > limit:
        raise BadRequest(f"the request body ({int(declared)} bytes) is larger than this node takes ({limit} bytes)",
                         limit=limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BadRequest(f"the request body is larger than this node takes ({limit} bytes)", limit=limit)
        chunks.append(chunk)
    return b"".join(chunks)


def authenticate(request: Request, raw: bytes) -> tuple[dict, bytes, str]:
    """``(body, payload hash, signer)`` of a request, as the Atoma node checks it: ``X-Signature`` present and
    readable (else 400), the body JSON (else 400), the signature valid over blake2b-256 of the body's compact form
    (else 401). The signer is the address derived from the signature's public key."""
    header = request.headers.get(SIGNATURE_HEADER)
    if header is None or not header.strip():
        raise MissingSignature(f"the {SIGNATURE_HEADER} header (the stack owner's signature of the body) is missing")
    try:
        parse_signature(header.strip())
    except MalformedSignatureError as exc:
        raise MissingSignature(f"{SIGNATURE_HEADER} cannot be read: {exc}") from None
    try:
        body = parse_body(raw)
        digest = body_hash(body)
    except BodyError as exc:
        raise BadRequest(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    try:
        signer = verify_hash_signature(digest, header.strip())
    except MalformedSignatureError as exc:
        raise MissingSignature(f"{SIGNATURE_HEADER} cannot be read: {exc}") from None
    except InvalidSignatureError:
        raise BadSignature(
            f"{SIGNATURE_HEADER} does not verify over this body (blake2b-256 of its compact JSON)"
        ) from None
    return body, digest, signer


def _stack_of(request: Request) -> int:
    header = request.headers.get(STACK_HEADER)
    if header is None or not header.strip():
        raise MissingStack(f"the {STACK_HEADER} header names the stack to serve this request on")
    try:
        stack = int(header.strip())
        if not 0 <= stack <= U64_MAX:
            raise ValueError
    except ValueError:
        raise MissingStack(f"{STACK_HEADER} must be a stack small id (an integer 0..2^64-1), got {header!r}") from None
    return stack


def _headers(outcome: Outcome) -> dict:
    out = {
        STACK_HEADER: str(outcome.stack_small_id),
        "X-Compute-Units": str(outcome.units),
        "X-Stack-Units-Left": str(outcome.units_left),
        "X-History-Index": str(outcome.history_index),
    }
    if outcome.duplicate:
        out[REPLAYED_HEADER] = "true"
    return out


def create_app(service: NodeService, *, keepalive_s: float = KEEPALIVE_S, max_body_bytes: int = MAX_BODY_BYTES) -> FastAPI:
    """The HTTP app around a NodeService (its engine, store, chain and wallet key). The caller keeps ownership of
    the service (close it after the server stops); requests still running at shutdown are recorded first."""
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        try:
            yield
        finally:
            await service.drain()

    app = FastAPI(title="atoma-ops node", version="1", lifespan=lifespan)
    app.state.service = service
    engine = service.engine

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        type_ = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "invalid_request_error")
        return error_response(exc.status_code, type_, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's own answer (422, {"detail": …}) would break the one error shape every client relies on
        where = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors())
        return error_response(400, "invalid_request_error", where or "invalid request")

    @app.exception_handler(ServingError)
    async def serving_error(request: Request, exc: ServingError) -> JSONResponse:
        return _from_error(exc)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return error_response(500, "internal_error", f"{type(exc).__name__}: {exc}")

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        arrived = now_ms()
        try:
            raw = await read_body(request, max_body_bytes)
            body, payload, signer = authenticate(request, raw)
            stack = _stack_of(request)
        except ServingError as exc:  # refused before admission (body, headers, signature): counted as admission's are
            service.metrics.ended(getattr(engine, "model", "") or "", "refused", exc.status)
            raise
        request_id = request.headers.get(REQUEST_ID_HEADER)
        tx_digest = request.headers.get(TX_DIGEST_HEADER)
        admission = await service.admit(stack, body, request_id=request_id, arrived_ms=arrived, owner=signer,
                                        tx_digest=tx_digest.strip() if tx_digest else None)
        streaming = bool(body.get("stream"))
        if isinstance(admission, Outcome):  # this request id was served before: its recorded request and answer
            if streaming:
                return EventStream(recorded_stream(service, admission, body_hash(admission.request)),
                                   headers={REPLAYED_HEADER: "true"})
            return JSONResponse(signed(service, admission.response or {}), headers=_headers(admission))
        run = service.start(admission)
        if streaming:
            # the run's task first (it sends the request to the engine), then this response's start: the engine's
            # work begins ~1 ms sooner than when the response path runs first
            try:
                await asyncio.sleep(0)
            except asyncio.CancelledError:  # the server stopping this handler: no stream will ever read the run
                run.abort()
                raise
            return EventStream(sse_stream(run, keepalive_s, payload), on_disconnect=run.abort,
                               headers={"Cache-Control": "no-cache", STACK_HEADER: str(stack)})
        # a client that goes away (closed, timed out: the openai SDK then retries) stops the engine as a dropped
        # stream does, and is charged what was produced, never the whole generation nobody will read
        watcher = asyncio.get_running_loop().create_task(_when_disconnected(request.receive, run.abort))
        try:
            outcome = await run.result()
        finally:
            watcher.cancel()
        if outcome.error is not None:
            return _from_error(outcome.error)
        return JSONResponse(signed(service, outcome.response or {}), headers=_headers(outcome))

    @app.get("/v1/models")
    async def models() -> dict:
        model = getattr(engine, "model", None)
        return {"object": "list", "data": [{"id": model, "object": "model", "owned_by": "atoma-ops"}] if model else []}

    @app.get("/health")
    async def health() -> dict:
        return {
            "status": "ok",
            "node_small_id": service.node_small_id,
            "address": service.address,
            "engine": getattr(engine, "kind", None),
            "model": getattr(engine, "model", None),
        }

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(service.metrics.render(), media_type=METRICS_CONTENT_TYPE)

    @app.get("/v1/stacks/{stack_small_id}/usage")
    async def stack_usage(stack_small_id: int) -> JSONResponse:
        if not 0 <= stack_small_id <= U64_MAX:  # no stack has such an id (and SQLite cannot bind it)
            return _from_error(StackNotFound(f"stack {stack_small_id} does not exist"))
        usage = await asyncio.to_thread(service.store.usage, stack_small_id)
        if usage is None:
            stack = await service.chain.get_stack(stack_small_id)
            if stack is None:
                return _from_error(StackNotFound(f"stack {stack_small_id} does not exist"))
            if stack.selected_node_id != service.node_small_id:
                return _from_error(StackNotServedHere(
                    f"stack {stack_small_id} was sold to node {stack.selected_node_id}; this is node {service.node_small_id}"
                ))
            return JSONResponse(
                {
                    "stack_small_id": stack_small_id,
                    "num_compute_units": stack.num_compute_units,
                    "used_units": 0,
                    "reserved_units": 0,
                    "units_left": stack.num_compute_units,
                    "num_requests": 0,
                    "in_flight": 0,
                    "overrun_units": 0,
                    "state": "open",
                    "selected_node_id": stack.selected_node_id,
                    "task_small_id": stack.task_small_id,
                    "settlement": None,
                }
            )
        return JSONResponse(usage.to_json())

    from .node_data import node_data_router  # the operator's, buyers' and attesters' signed reads

    app.include_router(node_data_router(service))
    return app


# --------------------------------------------------------------------------------------------------- running
def free_socket(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """A bound TCP socket. It names its protocol (IPPROTO_TCP) so that asyncio sets TCP_NODELAY on the connections
    it accepts (``asyncio`` skips sockets whose ``proto`` is 0): without it every response waits ~40 ms for the
    client's delayed ACK (measured: 44 ms per request on loopback)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock


def serve_forever(service: NodeService, *, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> None:
    """Run the server in this thread until interrupted (``atoma-ops node serve``)."""
    import uvicorn

    config = uvicorn.Config(create_app(service), host=host, port=port, log_level=log_level)
    uvicorn.Server(config).run()


def _in_loop_server(config: Any) -> Any:
    """A uvicorn server for the caller's event loop that leaves signals alone: uvicorn would otherwise take SIGINT
    and SIGTERM from the CLI or the Prefect run it serves in."""
    import uvicorn

    class InLoopServer(uvicorn.Server):
        def capture_signals(self):
            return contextlib.nullcontext()

    return InLoopServer(config)


@contextlib.asynccontextmanager
async def loopback_server(service: NodeService, host: str = "127.0.0.1", **app_options: Any) -> AsyncIterator[str]:
    """The node's HTTP server around ``service``, in this event loop, on a free port of ``host``; yields its URL.

    What ``atoma-ops stack serve --workload`` and the serve-stack flow send a workload to when no node URL is
    given: the same server ``atoma-ops node serve`` runs, reached over loopback as a buyer reaches it, with the
    service's own loop, engine and store (no thread, no second process). On exit the server stops taking requests
    and records those in progress (the app's lifespan drains the service); the caller still owns the service."""
    import uvicorn

    sock = free_socket(host, 0)
    config = uvicorn.Config(create_app(service, **app_options), log_config=None, log_level="warning",
                            access_log=False, lifespan="on", timeout_graceful_shutdown=5)
    server = _in_loop_server(config)
    task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()  # its error, if any
                raise RuntimeError("the node's HTTP server did not start")
            await asyncio.sleep(0.005)
        port = sock.getsockname()[1]
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        try:
            await task
        finally:
            sock.close()


class BackgroundServer:
    """uvicorn in a daemon thread on an already-bound loopback socket (tests, benchmarks)::

        with BackgroundServer(app) as srv:
            httpx.get(srv.url + "/health")
    """

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning",
                 lifespan: str = "on"):
        import uvicorn

        self.sock = free_socket(host, port)
        self.host, self.port = self.sock.getsockname()[:2]
        self.server = uvicorn.Server(
            uvicorn.Config(app, log_level=log_level, lifespan=lifespan, backlog=4096, timeout_graceful_shutdown=1)
        )
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 20.0) -> "BackgroundServer":
        import time

        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the HTTP server did not start")
            time.sleep(0.02)
        return self

    def stop(self, timeout: float = 20.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)
        self.sock.close()

    def __enter__(self) -> "BackgroundServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
