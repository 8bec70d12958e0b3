"""The node's OpenAI-compatible HTTP server (FastAPI + uvicorn).

- ``POST /v1/chat/completions`` with the stack in header ``X-Stack-Small-Id``: metered (reserve → run → settle) and
  recorded in the stack history before the response is sent. The response is the engine's OpenAI
  ``chat.completion`` body; headers ``X-Compute-Units`` (charged), ``X-Stack-Units-Left`` and ``X-History-Index``
  say what it cost.
- ``GET /v1/models``, ``GET /health``, ``GET /v1/stacks/{id}/usage``.

Every error is a JSON body ``{"error": {"type": …, "message": …}}`` with a 4xx/5xx status, and the server keeps
serving. Requests that arrive while the engine is busy are gathered into the next engine batch (``max_batch``); the
engine runs in a worker thread, one batch at a time.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..protocol.constants import U64_MAX
from .metering import BadRequest, MissingStack, ServingError
from .node import NodeService, Outcome

log = logging.getLogger("atoma_ops.serving.server")

STACK_HEADER = "X-Stack-Small-Id"


def error_response(status: int, type_: str, message: str, **fields: Any) -> JSONResponse:
    return JSONResponse({"error": {"type": type_, "message": message, **fields}}, status_code=status)


def _from_error(exc: ServingError) -> JSONResponse:
    return JSONResponse({"error": exc.to_json()}, status_code=exc.status)


class Batcher:
    """Gathers concurrent requests into engine batches of up to ``max_batch``; one batch runs at a time."""

    def __init__(self, service: NodeService, max_batch: int = 8):
        self.service = service
        self.max_batch = max(1, max_batch)
        self.queue: asyncio.Queue = asyncio.Queue()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass

    async def submit(self, stack_small_id: int, request: dict) -> Outcome:
        if self._task is None:
            self.start()
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        await self.queue.put((stack_small_id, request, future))
        return await future

    async def _loop(self) -> None:
        while True:
            batch = [await self.queue.get()]
            while len(batch) < self.max_batch and not self.queue.empty():
                batch.append(self.queue.get_nowait())
            try:
                outcomes = await self.service.serve_jobs([(s, r) for s, r, _ in batch])
            except Exception as exc:  # never leave a waiter hanging, never stop the loop
                log.exception("serving a batch failed")
                for _, _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            for (_, _, fut), outcome in zip(batch, outcomes):
                if not fut.done():
                    fut.set_result(outcome)


def create_app(service: NodeService, *, max_batch: int = 8) -> FastAPI:
    """The HTTP app around a NodeService (its engine, store and chain). The caller keeps ownership of the
    service (close it after the server stops)."""
    batcher = Batcher(service, max_batch)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        try:
            yield
        finally:
            await batcher.stop()

    app = FastAPI(title="atoma-ops node", version="1", lifespan=lifespan)
    app.state.service = service
    app.state.batcher = batcher
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
    async def chat_completions(request: Request) -> JSONResponse:
        raw = await request.body()
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise BadRequest(f"the request body is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise BadRequest("the request body must be a JSON object")
        header = request.headers.get(STACK_HEADER)
        if header is None or not header.strip():
            raise MissingStack(f"the {STACK_HEADER} header names the stack to serve this request on")
        try:
            stack = int(header.strip())
            if not 0 <= stack <= U64_MAX:
                raise ValueError
        except ValueError:
            raise MissingStack(f"{STACK_HEADER} must be a stack small id (an integer 0..2^64-1), got {header!r}") from None
        outcome = await batcher.submit(stack, body)
        if outcome.error is not None:
            return _from_error(outcome.error)
        return JSONResponse(
            outcome.response,
            headers={
                STACK_HEADER: str(stack),
                "X-Compute-Units": str(outcome.units),
                "X-Stack-Units-Left": str(outcome.units_left),
                "X-History-Index": str(outcome.history_index),
            },
        )

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

    @app.get("/v1/stacks/{stack_small_id}/usage")
    async def stack_usage(stack_small_id: int) -> JSONResponse:
        if not 0 <= stack_small_id <= U64_MAX:  # no stack has such an id (and SQLite cannot bind it)
            return error_response(404, "stack_not_found", f"stack {stack_small_id} does not exist")
        usage = await asyncio.to_thread(service.store.usage, stack_small_id)
        if usage is None:
            stack = await service.chain.get_stack(stack_small_id)
            if stack is None:
                return error_response(404, "stack_not_found", f"stack {stack_small_id} does not exist")
            if stack.selected_node_id != service.node_small_id:
                return error_response(
                    403,
                    "stack_not_served_by_this_node",
                    f"stack {stack_small_id} was sold to node {stack.selected_node_id}; this is node {service.node_small_id}",
                )
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

    return app


# --------------------------------------------------------------------------------------------------- running
def free_socket(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock


def serve_forever(service: NodeService, *, host: str = "127.0.0.1", port: int = 8000, max_batch: int = 8,
                  log_level: str = "info") -> None:
    """Run the server in this thread until interrupted (``atoma-ops node serve``)."""
    import uvicorn

    config = uvicorn.Config(create_app(service, max_batch=max_batch), host=host, port=port, log_level=log_level)
    uvicorn.Server(config).run()


class BackgroundServer:
    """uvicorn in a daemon thread on an already-bound loopback socket (tests, benchmarks)::

        with BackgroundServer(app) as srv:
            httpx.get(srv.url + "/health")
    """

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"):
        import uvicorn

        self.sock = free_socket(host, port)
        self.host, self.port = self.sock.getsockname()[:2]
        self.server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, lifespan="on"))
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
