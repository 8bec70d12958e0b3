"""One request, one path: admission, the engine's stream, then the charge and the history append.

Every request (HTTP, streamed or not; a test driving the service directly) goes through the same three steps, on
its own:

1. **admission** (:meth:`NodeService.admit <atoma_ops.serving.node.NodeService.admit>`): validate, check the stack
   and the model, estimate, reserve the estimate against the stack. Every refusal is decided here, before any
   inference, and costs nothing;
2. **generation** (:class:`RequestRun`): the engine streams the answer as soon as it can (vLLM's continuous
   batching, the CPU engine's scheduler); the run pumps the engine's stream in its own task, so a consumer that goes
   away (a dropped client) never leaves the engine running or the reservation held;
3. **record**: when the stream ends, the usage is charged (never more than reserved) and the request appended to the
   stack history in one store transaction; a client that dropped the stream is charged what was produced and the
   history records exactly that (``finish_reason: "abort"``), so the commitment and a replay bounded by the recorded
   length still agree. An engine error releases the whole reservation.

Store writes of concurrent requests are coalesced (:class:`GroupCommit`): a write waits for the transaction in
progress, never for other requests, so there is no batch barrier anywhere on the path.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
import weakref
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable

from ..core.failpoints import failpoint
from .engines.base import FINISH_ABORTED, Delta, EngineError, Generation, Sampling
from .metering import REQUEST_FAULT_STATUSES, EngineFailure, EngineRefused, Estimate, Overloaded, ServingError
from .store import Reservation, Settlement

log = logging.getLogger("atoma_ops.serving")


def now_ms() -> int:
    return int(time.time() * 1000)


class StoreFailure(ServingError):
    status, type = 500, "history_write_failed"


class ClientGone(ServingError):
    """The client went away before the first token: nothing produced, nothing charged."""

    status, type = 499, "client_closed_request"


# --------------------------------------------------------------------------------------------------- group commit
class _LoopState:
    __slots__ = ("pending", "running")

    def __init__(self) -> None:
        self.pending: list[tuple[Any, asyncio.Future]] = []
        self.running = False


class GroupCommit:
    """Runs ``fn(items) -> results`` (one store transaction over a list, one result per item) in a worker thread
    for whatever writes are pending each time the previous transaction ends.

    A caller cancelled while its write is pending still gets it written (the transaction may already be running);
    ``on_orphan(result)`` then undoes it (e.g. releases a reservation nobody will use).

    ``now(items) -> results | None``, when given, is tried first in the loop's own thread while no write is pending
    or running: it runs the write at once if it can do so without waiting (else None, and the write goes to the
    worker thread). One request alone then pays no thread hop (~0.3-1 ms of its time to first token); concurrent
    writes still coalesce in the thread.
    """

    def __init__(self, fn: Callable[[list], list], on_orphan: Callable[[Any], None] | None = None,
                 now: Callable[[list], list | None] | None = None):
        self._fn = fn
        self._on_orphan = on_orphan
        self._now = now
        self._states: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._tasks: set[asyncio.Task] = set()

    async def submit(self, item: Any) -> Any:
        loop = asyncio.get_running_loop()
        state = self._states.get(loop)
        if state is None:
            state = self._states[loop] = _LoopState()
        if self._now is not None and not state.running and not state.pending:
            results = self._now([item])
            if results is not None:
                return results[0]
        future: asyncio.Future = loop.create_future()
        state.pending.append((item, future))
        if not state.running:
            state.running = True
            task = loop.create_task(self._drain(state))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            if self._on_orphan is not None:
                future.add_done_callback(self._orphaned)
            raise

    def _orphaned(self, future: asyncio.Future) -> None:
        if not future.cancelled() and future.exception() is None:
            try:
                self._on_orphan(future.result())  # type: ignore[misc]
            except Exception:  # noqa: BLE001 - best effort: recovery releases what is left
                log.exception("undoing an orphaned store write failed")

    async def _drain(self, state: _LoopState) -> None:
        try:
            while state.pending:
                batch, state.pending = state.pending, []
                try:
                    results = await asyncio.to_thread(self._fn, [item for item, _ in batch])
                except Exception as exc:  # noqa: BLE001 - each waiter gets the store's error
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (_, future), result in zip(batch, results):
                    if not future.done():
                        future.set_result(result)
        finally:
            state.running = False


# --------------------------------------------------------------------------------------------------- one request
@dataclass
class Admission:
    """An admitted request: its reservation is held until the run records or releases it."""

    stack_small_id: int
    request: dict
    estimate: Estimate
    sampling: Sampling
    reservation: Reservation
    arrived_ms: int
    request_id: str | None = None
    drawn_seed: int | None = None  # the seed the node drew for unseeded sampling (recorded for replays)


@dataclass
class Outcome:
    """What became of one request: a response (charged and recorded) or an error (nothing charged)."""

    index: int
    stack_small_id: int | None
    request: Any
    estimate: Estimate | None = None
    response: dict | None = None
    error: ServingError | None = None
    units: int = 0
    history_index: int | None = None
    units_left: int | None = None
    request_id: str | None = None
    arrived_ms: int | None = None
    first_token_ms: int | None = None
    finished_ms: int | None = None
    duplicate: bool = False  # the request id was served before: the recorded answer, nothing charged again

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_json(self) -> dict:
        doc: dict = {"index": self.index, "stack_small_id": self.stack_small_id, "ok": self.ok}
        if self.request_id is not None:
            doc["request_id"] = self.request_id
        if self.estimate is not None:
            doc["estimate"] = self.estimate.to_json()
        if self.ok:
            usage = (self.response or {}).get("usage", {})
            choice = ((self.response or {}).get("choices") or [{}])[0]
            doc.update(
                units=self.units,
                history_index=self.history_index,
                units_left=self.units_left,
                prompt_tokens=usage.get("prompt_tokens"),
                completion_tokens=usage.get("completion_tokens"),
                finish_reason=choice.get("finish_reason"),
                content=(choice.get("message") or {}).get("content"),
                duplicate=self.duplicate,
            )
            if self.arrived_ms is not None and self.finished_ms is not None:
                doc["latency_ms"] = self.finished_ms - self.arrived_ms
            if self.arrived_ms is not None and self.first_token_ms is not None:
                doc["ttft_ms"] = self.first_token_ms - self.arrived_ms
        else:
            doc["error"] = self.error.to_json()  # type: ignore[union-attr]
        return doc


_END = object()
_KEEPALIVE = object()


class RequestRun:
    """One admitted request on the engine.

    ``batches()`` yields the engine's deltas as they come (``None`` every ``keepalive_s`` of silence, so a server
    can send a keep-alive); ``result()`` waits for the recorded :class:`Outcome`. ``abort()`` (synchronous, safe in
    any ``finally``) stops generation; the produced part is still charged and recorded by the run's own task.
    """

    def __init__(self, service: Any, admission: Admission, *, index: int = 0, after: asyncio.Future | None = None):
        self.service = service
        self.admission = admission
        self.index = index
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model = service.engine.model
        self.generation = Generation()
        self.first_token_ms: int | None = None
        self._after = after
        self._recording = False  # the engine is done and the answer is being recorded (abort() no longer cancels)
        self._queue: asyncio.Queue = asyncio.Queue()
        self._last_put = time.monotonic()  # when the engine last produced text (keep-alives count silence from it)
        self._keepalive_timer: asyncio.TimerHandle | None = None
        loop = asyncio.get_running_loop()
        self.done: asyncio.Future = loop.create_future()
        service.metrics.of(self.model).queued.inc()
        self._task = loop.create_task(self._pump())
        service.tasks.add(self._task)
        self._task.add_done_callback(service.tasks.discard)

    # -- the consumer's side
    async def batches(self, keepalive_s: float | None = None) -> AsyncIterator[list[Delta] | None]:
        """The deltas in the order produced, every one already produced at once: a relay writes them in one piece
        instead of one write per token (what makes a busy node's relay affordable)."""
        if keepalive_s:
            self._arm_keepalive(keepalive_s)
        try:
            done = False
            while not done:
                item = await self._queue.get()
                batch: list[Delta] = []
                while True:
                    if item is _END:
                        done = True
                        break
                    if item is not _KEEPALIVE:
                        batch.append(item)
                    if self._queue.empty():
                        break
                    item = self._queue.get_nowait()
                if batch:
                    yield batch
                elif not done:
                    yield None
        finally:
            if self._keepalive_timer is not None:
                self._keepalive_timer.cancel()

    def _arm_keepalive(self, keepalive_s: float) -> None:
        """A keep-alive marker in the queue after every ``keepalive_s`` without text: one timer per period of
        silence, where a timeout around each wait cost ~2% of a busy node's CPU."""
        loop = asyncio.get_running_loop()

        def tick() -> None:
            quiet = time.monotonic() - self._last_put
            if quiet >= keepalive_s:
                self._queue.put_nowait(_KEEPALIVE)
                self._last_put, quiet = time.monotonic(), 0.0
            self._keepalive_timer = loop.call_later(keepalive_s - quiet, tick)

        self._keepalive_timer = loop.call_later(keepalive_s, tick)

    async def result(self) -> Outcome:
        try:
            return await asyncio.shield(self.done)
        except asyncio.CancelledError:
            self.abort()
            raise

    def abort(self) -> None:
        """Stop the engine (the client went away). Once the answer is being recorded it is recorded: cancelling
        then would report a write failure for an answer the store charges anyway."""
        if not self._task.done() and not self._recording:
            self._task.cancel()

    # -- the run's own task
    async def _pump(self) -> None:
        a, service = self.admission, self.service
        metrics = service.metrics.of(self.model)
        error: ServingError | None = None
        aborted = False
        last_token = 0.0
        stream = service.engine.stream(a.request, a.sampling)
        try:
            async for delta in stream:
                now = time.monotonic()
                first = self.first_token_ms is None and bool(delta.tokens or delta.text)
                if first:
                    self.first_token_ms = now_ms()
                    metrics.queued.dec()
                    metrics.running.inc()
                    metrics.ttft.observe(max(0.0, (self.first_token_ms - a.arrived_ms) / 1000))
                elif delta.tokens and last_token:
                    metrics.inter_token.observe((now - last_token) / max(1, delta.tokens))
                if delta.tokens:
                    last_token = now
                self.generation.add(delta)
                self._queue.put_nowait(delta)
                if delta.text:  # what the client sees: a delta without text sends nothing
                    self._last_put = now
                if first:
                    # let the consumer send the first token now: an engine that delivers many deltas in one read
                    # (a relayed server's chunks arrive together) would otherwise hold it until all were handled
                    await asyncio.sleep(0)
            if self.generation.finish_reason is None:
                error = EngineFailure("the engine's stream ended without a finish reason (nothing charged)")
        except asyncio.CancelledError:
            aborted = True
        except EngineError as exc:
            if exc.status in REQUEST_FAULT_STATUSES:
                error = EngineRefused(f"the model's server refused the request: {exc} (nothing charged)")
            elif exc.status == 429:
                error = Overloaded(f"the model's server is overloaded: {exc} (nothing charged)", retry_after_s=1)
            else:
                error = EngineFailure(f"the engine could not serve the request: {exc} (nothing charged)")
        except Exception as exc:  # noqa: BLE001 - a bug in an engine must not take the node down
            log.exception("engine failure")
            error = EngineFailure(f"the engine failed: {exc!r} (nothing charged)")
        finally:
            try:
                await stream.aclose()  # type: ignore[attr-defined]
            except BaseException:  # noqa: BLE001 - the engine frees what it holds on close; nothing else to do
                pass
        if self.first_token_ms is None:
            metrics.queued.dec()
        else:
            metrics.running.dec()
        self._recording = True  # from here abort() leaves the run alone
        try:
            outcome = await self._record(error, aborted)
        except BaseException as exc:  # never leave a waiter hanging
            outcome = Outcome(self.index, a.stack_small_id, a.request, a.estimate, error=StoreFailure(str(exc)))
        finally:
            service.pending -= 1
        self._queue.put_nowait(_END)
        if not self.done.done():
            self.done.set_result(outcome)

    async def _record(self, error: ServingError | None, aborted: bool) -> Outcome:
        a, service, gen = self.admission, self.service, self.generation
        out = Outcome(self.index, a.stack_small_id, a.request, a.estimate, request_id=a.request_id,
                      arrived_ms=a.arrived_ms, first_token_ms=self.first_token_ms)
        if error is None and aborted and gen.completion_tokens == 0:
            error = ClientGone("the client went away before the first token (nothing charged)")
        if self._after is not None:  # ordered serving (testing.serve_all): record after the requests before this one
            await asyncio.shield(self._after)
        if error is not None:
            await service.release(a.reservation)
            out.error = error
            outcome = ("aborted" if isinstance(error, ClientGone) else "refused" if isinstance(error, EngineRefused)
                       else "overloaded" if isinstance(error, Overloaded) else "failed")
            service.metrics.ended(self.model, outcome, error.status)
            return out
        response = gen.completion(self.model, FINISH_ABORTED if aborted else None)
        response["id"], response["created"] = self.id, self.created
        failpoint("serve:after-engine")  # answer computed, not recorded: nothing charged, served again
        out.finished_ms = now_ms()
        settlement = Settlement(
            a.reservation, a.request, response, request_id=a.request_id, seed=a.drawn_seed,
            arrived_ms=a.arrived_ms, first_token_ms=self.first_token_ms, finished_ms=out.finished_ms,
        )
        try:
            settled = await service.settler.submit(settlement)
        except Exception as exc:  # noqa: BLE001 - the store's error: release, charge nothing
            log.error("recording a request failed, releasing it: %s", exc)
            await service.release(a.reservation)
            out.error = StoreFailure(f"the request was not recorded ({exc}); nothing charged")
            service.metrics.ended(self.model, "failed")
            return out
        failpoint("serve:after-record")  # charged and in the history, not answered: not served again
        out.response = settled.entry.response if settled.duplicate else response
        out.units = settled.entry.units
        out.history_index = settled.entry.index
        out.units_left = settled.units_left
        out.duplicate = settled.duplicate
        m = service.metrics.of(self.model)
        if not settled.duplicate:
            m.units_charged.inc(settled.entry.units)
            m.input_tokens.inc(gen.prompt_tokens)
            m.output_tokens.inc(gen.completion_tokens)
            m.latency.observe(max(0.0, (out.finished_ms - a.arrived_ms) / 1000))
        m.ended("duplicate" if settled.duplicate else ("aborted" if aborted else "served"))
        return out
