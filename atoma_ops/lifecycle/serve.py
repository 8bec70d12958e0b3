"""Stage 5, serve-stack: a workload sent to the stack's node as its buyer sends it — over HTTP, every request
signed with the stack owner's key (``atoma_ops.client``), every answer's signature checked — and resumable: each line
has a request id, so a re-run is answered from the node's record for what an earlier run served or refused, and
nothing is charged twice.

The node is a URL (a running ``atoma-ops node serve``) or a :class:`NodeService` (the node's HTTP server is then
started in this event loop on a free loopback port for the run: the same server, reached the same way). The node
records requests in the order they arrive at its end, not the file's; the history, its commitment and the
attesters' replay all follow that recorded order, so any order is as valid as another (docs/serving.md).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import httpx

from ..chain.errors import NotFound
from ..chain.port import Chain
from ..client import RequestSigner, Sent, send_workload
from ..client.chat import base_url, tls_verify
from ..serving.node import NodeService
from ..serving.server import loopback_server

#: request ids of a workload's lines: ``wl-<digest>-<line index>`` (see :func:`workload_id`)
WORKLOAD_ID_PREFIX = "wl-"


@dataclass
class ServeReport:
    """What serving ``workload[start:stop]`` on a stack did (JSON-serialisable: a Prefect task result).

    ``served`` / ``refused`` are this run's; ``already_served`` / ``already_refused`` were answered from the node's
    record because an earlier run served or refused them (under the same workload id); ``failed`` are requests the engine or the store could
    not finish (nothing charged, nothing recorded: a re-run serves them again). ``units_charged`` and
    ``completion_tokens`` are this run's; ``units_used`` / ``units_left`` (and ``usage``, the whole of it) are the
    stack's after it, as its node reports them.
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
    usage: dict | None = None  # the stack's usage as the node reports it after the run (GET /v1/stacks/{id}/usage)

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


def _problem(sent: Sent) -> dict:
    error = sent.error or {}
    return {"index": sent.index, "request_id": sent.request_id, "status": sent.status, "type": error.get("type"),
            "error": error.get("message")}


async def buyer_signer(chain: Chain, stack_small_id: int, buyer: str | None = None, *,
                       recorded: NodeService | None = None) -> RequestSigner:
    """The signer of requests on ``stack_small_id``: ``buyer`` (alias or address of the chain's wallet), by default
    the stack's owner as the chain says, or, once the stack is claimed and gone from the chain, as the serving node
    ``recorded`` it (a re-run of a finished lifecycle then gets the recorded answers and charges nothing).

    Raises:
        NotFound: no such stack (or it was claimed); WalletError: the wallet does not hold the buyer's key."""
    wallet = chain.wallet  # type: ignore[attr-defined]
    if buyer is None:
        stack = await chain.get_stack(stack_small_id)
        facts = None if stack is not None or recorded is None else recorded.store.facts(stack_small_id)
        if stack is None and facts is None:
            raise NotFound(f"stack {stack_small_id} does not exist on this chain (or was claimed)")
        buyer = stack.owner if stack is not None else facts.owner
    return RequestSigner(wallet, buyer)


async def serve_workload(
    node: NodeService | str,
    signer: RequestSigner,
    stack_small_id: int,
    workload: Sequence[dict],
    start: int = 0,
    stop: int | None = None,
    *,
    concurrency: int = 8,
    workload_key: str | None = None,
    node_address: str | None = None,
    on_skipped: Callable[[int, str], None] | None = None,
    on_outcome: Callable[[Sent], None] | None = None,
) -> tuple[ServeReport, list[Sent]]:
    """Send ``workload[start:stop]`` to the node (a URL, or a NodeService behind its own server on loopback),
    signed by ``signer``, ``concurrency`` requests at once. Line ``i`` carries the request id ``wl-<digest>-<i>``:
    a line the stack served or refused before under that id is answered from the node's record (counted as
    ``already_served`` / ``already_refused``), so a re-run (after a crash, a refusal or a completed run) never
    fails and never charges twice. Every answer must be signed by ``node_address`` (default: the service's own
    address; for a URL, any valid key unless given).

    ``on_skipped(index, "served"|"refused")`` is called for each line answered from the record,
    ``on_outcome(sent)`` for each line served, refused or failed now (``sent.index``: the line's index). Returns the
    report and this run's outcomes in line order."""
    stop = len(workload) if stop is None else min(stop, len(workload))
    start = max(0, start)
    key = workload_key or workload_id(workload)
    lines = list(range(start, stop))
    report = ServeReport(stack_small_id, 0, [], 0, 0, 0, key, start, max(start, stop))

    def landed(sent: Sent) -> None:
        sent.index = lines[sent.index]  # send_workload numbers what it sends; the line's index is what counts
        if sent.replayed:
            if on_skipped is not None:
                on_skipped(sent.index, "served" if sent.ok else "refused")
        elif on_outcome is not None:
            on_outcome(sent)

    async def send(url: str, address: str | None) -> list[Sent]:
        sent = await send_workload(
            url, signer, stack_small_id, [workload[i] for i in lines],
            request_ids=[workload_request_id(key, i) for i in lines], concurrency=concurrency,
            node_address=address, on_sent=landed,
        ) if lines else None
        async with httpx.AsyncClient(timeout=60.0, verify=tls_verify(url)) as http:  # the usage, as the node says
            r = await http.get(f"{base_url(url)}/v1/stacks/{stack_small_id}/usage")
        if r.status_code == 200:
            report.usage = r.json()
            report.units_used, report.units_left = int(report.usage["used_units"]), int(report.usage["units_left"])
        return sent.sent if sent is not None else []

    if isinstance(node, str):
        sent = await send(node, node_address)
    else:
        concurrency = max(1, min(concurrency, node.max_pending))  # past max_pending the node answers 429
        async with loopback_server(node) as url:
            sent = await send(url, node_address or node.address)
    outcomes: list[Sent] = []
    for s in sent:
        if s.replayed:
            if s.ok:
                report.already_served += 1
            else:
                report.already_refused += 1
            continue
        outcomes.append(s)
        if s.ok:
            report.served += 1
            report.units_charged += s.units
            report.completion_tokens += int(((s.response or {}).get("usage") or {}).get("completion_tokens") or 0)
        elif s.final:
            report.refused.append(_problem(s))
        else:
            report.failed.append(_problem(s))
    return report, outcomes


async def serve_batch(
    node: NodeService | str, signer: RequestSigner, stack_small_id: int, workload: Sequence[dict], start: int,
    stop: int, *, concurrency: int = 8, workload_key: str | None = None, node_address: str | None = None,
) -> ServeReport:
    """Send the window ``workload[start:stop]`` (one task's worth) through :func:`serve_workload`."""
    report, _ = await serve_workload(
        node, signer, stack_small_id, workload, start, stop, concurrency=concurrency, workload_key=workload_key,
        node_address=node_address,
    )
    return report
