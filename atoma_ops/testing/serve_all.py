"""Requests served on a :class:`~atoma_ops.serving.node.NodeService` directly, without HTTP, admitted and recorded
in the list's order: what the tests of the node's core (metering, the history, settlement, attestation) use to put
requests in a stack. The product has one way in, the node's HTTP server: ``stack serve`` and the serve-stack flow
send as a buyer does (``lifecycle.serve_workload``).
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable, Sequence

from ..serving.metering import InsufficientUnits, ServingError
from ..serving.serve import Outcome, RequestRun


async def serve_all(
    service: Any,
    stack_small_id: int,
    requests: Sequence[dict],
    *,
    concurrency: int = 8,
    request_ids: Sequence[str | None] | None = None,
    on_outcome: Callable[[Outcome], None] | None = None,
) -> list[Outcome]:
    """Serve requests on one stack, up to ``concurrency`` at once on the engine, admitted and recorded in their
    order (the history order is the list's, whatever order the engine finishes them in: a re-run after a crash
    resumes to the same history). Outcomes come back in order; ``on_outcome`` is called as each is known."""
    ids = list(request_ids) if request_ids is not None else [None] * len(requests)
    window = asyncio.Semaphore(max(1, concurrency))
    loop = asyncio.get_running_loop()
    previous: asyncio.Future | None = None
    waits: list[asyncio.Future] = []
    for i, request in enumerate(requests):
        await window.acquire()
        recorded: asyncio.Future = loop.create_future()
        waits.append(recorded)
        try:
            try:
                admission = await service.admit(stack_small_id, request, request_id=ids[i])
            except InsufficientUnits as exc:
                # refused only because requests in flight hold reservations: wait for them, then ask once more, so a
                # workload near the end of its stack gets what a one-at-a-time run would
                if not exc.fields.get("reserved_in_flight") or all(w.done() for w in waits[:-1]):
                    raise
                await asyncio.gather(*waits[:-1])
                admission = await service.admit(stack_small_id, request, request_id=ids[i])
        except ServingError as exc:
            outcome = Outcome(i, stack_small_id, request, error=exc, request_id=ids[i])
            _chain_done(previous, recorded, outcome, window, on_outcome)
            previous = recorded
            continue
        if isinstance(admission, Outcome):  # a request id served before: its recorded answer
            admission.index = i
            _chain_done(previous, recorded, admission, window, on_outcome)
            previous = recorded
            continue
        run = RequestRun(service, admission, index=i, after=previous)
        run.done.add_done_callback(lambda f, r=recorded: _settle_wait(f, r, window, on_outcome))
        previous = recorded
    return list(await asyncio.gather(*waits))


def _settle_wait(done: asyncio.Future, recorded: asyncio.Future, window: asyncio.Semaphore, on_outcome) -> None:
    outcome = done.result()
    window.release()
    if on_outcome is not None:
        on_outcome(outcome)
    if not recorded.done():
        recorded.set_result(outcome)


def _chain_done(previous, recorded, outcome, window, on_outcome) -> None:
    """A request settled at admission still takes its place in the order: done when the one before it is."""

    def finish(_: Any = None) -> None:
        window.release()
        if on_outcome is not None:
            on_outcome(outcome)
        if not recorded.done():
            recorded.set_result(outcome)

    if previous is None or previous.done():
        finish()
    else:
        previous.add_done_callback(finish)
