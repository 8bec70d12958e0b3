"""Stage 5, serve-stack: a workload served on a stack, resumable (each line has a request id, so a re-run skips
what an earlier run served or refused and never charges twice).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

from ..serving.node import NodeService
from ..serving.serve import Outcome

#: request ids of a workload's lines: ``wl-<digest>-<line index>`` (see :func:`workload_id`)
WORKLOAD_ID_PREFIX = "wl-"


@dataclass
class ServeReport:
    """What serving ``workload[start:stop]`` on a stack did (JSON-serialisable: a Prefect task result).

    ``served`` / ``refused`` are this run's; ``already_served`` / ``already_refused`` were skipped because an
    earlier run recorded them (under the same workload id); ``failed`` are requests the engine or the store could
    not finish (nothing charged, nothing recorded: a re-run serves them again). ``units_charged`` and
    ``completion_tokens`` are this run's; ``units_used`` / ``units_left`` are the stack's after it.
    """

    stack_small_id: int
    served: int
    refused: list[dict]
    already_served: int
    units_used: int
    units_left: int
    workload_id: str = ""
    start: int = 0
    stop: int = 0
    already_refused: int = 0
    failed: list[dict] = field(default_factory=list)
    units_charged: int = 0
    completion_tokens: int = 0

    @property
    def requests(self) -> int:
        return self.stop - self.start

    def to_json(self) -> dict:
        return asdict(self)


def _canonical(request: dict) -> dict:
    return {k: v for k, v in request.items() if k != "stream"}


def workload_id(workload: Sequence[dict]) -> str:
    """``wl-`` and a short blake2b of the workload's canonical JSON (its requests in order, keys sorted, ``stream``
    left out): the same requests are the same workload whatever the file's comments, blank lines or key order, and
    a changed workload is another workload (served afresh, nothing skipped)."""
    canonical = json.dumps([_canonical(r) for r in workload], sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return WORKLOAD_ID_PREFIX + hashlib.blake2b(canonical.encode(), digest_size=8).hexdigest()


def workload_request_id(workload_key: str, index: int) -> str:
    """The request id of line ``index`` (0-based, requests only) of the workload ``workload_key``."""
    return f"{workload_key}-{index}"


def _problem(index: int, request_id: str | None, error: Any) -> dict:
    return {"index": index, "request_id": request_id, "type": error.type, "error": str(error)}


async def serve_workload(
    service: NodeService,
    stack_small_id: int,
    workload: Sequence[dict],
    start: int = 0,
    stop: int | None = None,
    *,
    concurrency: int = 8,
    workload_key: str | None = None,
    on_skipped: Callable[[int, str], None] | None = None,
    on_outcome: Callable[[Outcome], None] | None = None,
) -> tuple[ServeReport, list[Outcome]]:
    """Serve ``workload[start:stop]`` on the stack, ``concurrency`` requests at once on the engine, recorded in the
    workload's order. Each line carries the request id ``wl-<digest>-<index>``: lines the stack already served or
    refused under that id are skipped, so a re-run (after a crash, a refusal or a completed run) never fails and
    never charges twice, and a final refusal (a 4xx but 429) is recorded so the next run skips it too.

    ``on_skipped(index, "served"|"refused")`` is called for each skipped line, ``on_outcome(outcome)`` as each
    served line ends (``outcome.index`` is the line's index in the workload). Returns the report and this run's
    outcomes, in order.
    """
    stop = len(workload) if stop is None else min(stop, len(workload))
    start = max(0, start)
    key = workload_key or workload_id(workload)
    known = await asyncio.to_thread(service.store.request_ids, stack_small_id, key + "-")
    report = ServeReport(stack_small_id, 0, [], 0, 0, 0, key, start, max(start, stop))
    todo: list[int] = []
    for i in range(start, stop):
        seen = known.get(workload_request_id(key, i))
        if seen is None:
            todo.append(i)
            continue
        if seen == "served":
            report.already_served += 1
        else:
            report.already_refused += 1
        if on_skipped is not None:
            on_skipped(i, seen)

    mapped: set[int] = set()

    def landed(outcome: Outcome) -> None:  # serve's index is the position in ``todo``: make it the line's
        if id(outcome) not in mapped:
            mapped.add(id(outcome))
            outcome.index = todo[outcome.index]
        if on_outcome is not None:
            on_outcome(outcome)

    outcomes: list[Outcome] = []
    if todo:
        outcomes = await service.serve(
            stack_small_id,
            [workload[i] for i in todo],
            concurrency=max(1, min(concurrency, service.max_pending)),  # past max_pending admission would say 429
            request_ids=[workload_request_id(key, i) for i in todo],
            on_outcome=landed,
        )
    for position, o in enumerate(outcomes):
        if id(o) not in mapped:
            o.index = todo[position]
        if o.ok and o.duplicate:  # another run served it meanwhile: nothing charged here
            report.already_served += 1
        elif o.ok:
            report.served += 1
            report.units_charged += o.units
            report.completion_tokens += int(((o.response or {}).get("usage") or {}).get("completion_tokens") or 0)
        elif o.error.final:  # type: ignore[union-attr]
            report.refused.append(_problem(o.index, o.request_id, o.error))
        else:
            report.failed.append(_problem(o.index, o.request_id, o.error))
    usage = await asyncio.to_thread(service.store.usage, stack_small_id)
    report.units_used = usage.used_units if usage else 0
    report.units_left = usage.units_left if usage else 0
    return report, outcomes


async def serve_batch(
    service: NodeService, stack_small_id: int, workload: Sequence[dict], start: int, stop: int, *, concurrency: int = 8,
    workload_key: str | None = None,
) -> ServeReport:
    """Serve the window ``workload[start:stop]`` (one task's worth) through :func:`serve_workload`."""
    report, _ = await serve_workload(
        service, stack_small_id, workload, start, stop, concurrency=concurrency, workload_key=workload_key
    )
    return report
