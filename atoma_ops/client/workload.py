"""A workload sent as its buyer sends it: every request signed with the stack owner's key, over HTTP to the stack's
node, ``concurrency`` at a time, every answer's signature checked.

Each request carries its request id (``X-Request-Id``, e.g. the workload line's ``wl-<digest>-<index>``), so a
re-run after a crash or a refusal is answered from the node's history for what was served, charged once, and with
the recorded refusal for what was refused (both marked ``Idempotent-Replayed: true``: :attr:`Sent.replayed`). A refusal
the node calls final (``x-should-retry: false``) is not sent again; 425 while requests in flight hold the stack's
units and 429 (overloaded) are sent again after ``Retry-After`` (1 s without one), for at least ``retries`` retries
and at least ``retry_for_s`` seconds (longer than the node's reservation lease, so the units of a killed process's
reservation come back within it), never past both. Over HTTP the node records
requests in the order they finish, as for any buyer: the history's order is the node's, not the file's.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import httpx

from ..protocol.node_http import REPLAYED_HEADER, REQUEST_ID_HEADER
from .chat import CHAT_PATH, base_url, tls_verify
from .signing import AtomaAuth, RequestSigner
from .verify import ResponseSignatureError, verify_response

#: how long a 425/429 is sent again at least (seconds): twice the node's default reservation lease (30 s), so a
#: reservation a killed process left behind expires within it
RETRY_FOR_S = 60.0
#: the shortest wait between two tries, whatever ``Retry-After`` says (a node answering 0 is not sent a flood)
MIN_RETRY_S = 0.25


def retry_after_s(value: str | None, longest: float) -> float:
    """The wait a ``Retry-After`` header asks for (delay seconds; 1 without one or unreadable), at least
    :data:`MIN_RETRY_S`, at most ``longest``."""
    try:
        wait = float(value) if value else 1.0
    except ValueError:
        wait = 1.0
    return 1.0 if math.isnan(wait) else min(max(wait, MIN_RETRY_S), longest)


@dataclass
class Sent:
    """One request of the workload: served (its signed answer), refused (the node's error) or failed."""

    index: int
    request_id: str | None
    status: int | None
    response: dict | None = None
    error: dict | None = None
    units: int = 0
    history_index: int | None = None
    signer: str | None = None
    attempts: int = 1
    replayed: bool = False  # answered from the node's record of this request id (served or refused before)
    final: bool = False  # a refusal the node calls final (``x-should-retry: false``): sending it again is pointless

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.error is None

    def to_json(self) -> dict:
        doc: dict = {"index": self.index, "request_id": self.request_id, "status": self.status, "ok": self.ok,
                     "attempts": self.attempts, "replayed": self.replayed}
        if self.ok:
            choice = ((self.response or {}).get("choices") or [{}])[0]
            usage = (self.response or {}).get("usage") or {}
            doc.update(units=self.units, history_index=self.history_index, signed_by=self.signer,
                       prompt_tokens=usage.get("prompt_tokens"), completion_tokens=usage.get("completion_tokens"),
                       content=(choice.get("message") or {}).get("content"), finish_reason=choice.get("finish_reason"))
        else:
            doc.update(error=self.error, final=self.final)
        return doc


@dataclass
class WorkloadReport:
    stack_small_id: int
    sent: list[Sent] = field(default_factory=list)

    @property
    def served(self) -> int:
        return sum(1 for s in self.sent if s.ok)

    @property
    def units(self) -> int:
        """Units charged by this sending (an answer replayed from the node's record was charged before)."""
        return sum(s.units for s in self.sent if s.ok and not s.replayed)

    def to_json(self) -> dict:
        return {"stack_small_id": self.stack_small_id, "served": self.served, "refused": len(self.sent) - self.served,
                "replayed": sum(1 for s in self.sent if s.replayed), "units_charged": self.units,
                "outcomes": [s.to_json() for s in self.sent]}


async def send_workload(url: str, signer: RequestSigner, stack: int, requests: Sequence[dict], *,
                        request_ids: Sequence[str | None] | None = None, concurrency: int = 8,
                        node_address: str | None = None, tx_digest: str | None = None, retries: int = 20,
                        retry_for_s: float = RETRY_FOR_S, timeout: float = 600.0,
                        on_sent: Callable[[Sent], Any] | None = None) -> WorkloadReport:
    """Send ``requests`` (non-streamed chat bodies) to the node at ``url`` as the owner of ``stack``.

    A 425 or 429 that is not final is sent again after its ``Retry-After`` (at most ``retry_for_s``) while fewer
    than ``retries`` retries were made or the next attempt starts within ``retry_for_s`` of the first.

    An answer not signed by ``node_address`` (when given; else by any valid key) is recorded as failed
    (``type: "invalid_response_signature"``): a buyer does not take an answer it cannot attribute.
    """
    ids = list(request_ids) if request_ids is not None else [None] * len(requests)
    report = WorkloadReport(stack, [Sent(i, ids[i], None) for i in range(len(requests))])
    window = asyncio.Semaphore(max(1, concurrency))
    auth = AtomaAuth(signer, stack, tx_digest)
    limits = httpx.Limits(max_connections=max(1, concurrency), max_keepalive_connections=max(1, concurrency))
    async with httpx.AsyncClient(base_url=base_url(url), auth=auth, timeout=timeout, limits=limits,
                                 verify=tls_verify(url)) as http:

        async def one(i: int) -> None:
            sent = report.sent[i]
            headers = {REQUEST_ID_HEADER: ids[i]} if ids[i] else {}
            body = {k: v for k, v in requests[i].items() if k not in ("stream", "stream_options")}
            async with window:
                loop = asyncio.get_running_loop()
                attempt, started = 0, loop.time()
                while True:
                    attempt += 1
                    r = await http.post(CHAT_PATH, json=body, headers=headers)
                    sent.status, sent.attempts = r.status_code, attempt
                    retry = r.headers.get("x-should-retry") != "false" and r.status_code in (425, 429)
                    if r.status_code == 200 or not retry:
                        break
                    wait = retry_after_s(r.headers.get("retry-after"), retry_for_s)
                    if attempt > retries and loop.time() + wait - started > retry_for_s:
                        break  # bounded: past both the retries and the time a 425 is worth waiting for
                    await asyncio.sleep(wait)
            _land(sent, r, node_address)
            if on_sent is not None:
                on_sent(sent)

        await asyncio.gather(*(one(i) for i in range(len(requests))))
    return report


def _land(sent: Sent, r: httpx.Response, node_address: str | None) -> None:
    sent.replayed = r.headers.get(REPLAYED_HEADER, "").lower() == "true"
    sent.final = r.status_code != 200 and r.headers.get("x-should-retry") == "false"
    try:
        doc = r.json()
    except ValueError:
        sent.error = {"type": "http_error", "message": r.text[:300]}
        return
    if r.status_code != 200:
        sent.error = doc.get("error") if isinstance(doc, dict) and isinstance(doc.get("error"), dict) else {
            "type": "http_error", "message": r.text[:300]}
        return
    try:
        sent.signer = verify_response(doc, node_address)
    except ResponseSignatureError as exc:
        sent.error = {"type": "invalid_response_signature", "message": str(exc)}
        return
    sent.response = doc
    sent.units = int(r.headers.get("x-compute-units") or 0)
    index = r.headers.get("x-history-index")
    sent.history_index = int(index) if index is not None else None
