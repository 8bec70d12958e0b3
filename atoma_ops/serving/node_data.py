"""The node's data over HTTP, for hosts that cannot open its store: its served usage (the ledger's import) and a
stack's history export (attesters). Both are signed ``GET``s (``protocol.node_reads``: the reader's Sui signature
over a description of the request, timestamped, bound to this node's address) and answer only their readers:

- ``GET /v1/node/usage?after=CURSOR&limit=N``: the node's operator (the address that owns its NodeBadge, the
  node's own wallet address); one row per served request after the cursor, in the order they were stored
  (``usage_feed``);
- ``GET /v1/stacks/{id}/history``: the operator, the stack's owner (its buyer), and the nodes the contract asked
  to attest the stack (the signer owns the NodeBadge of a node in the settlement ticket's
  ``requested_attestation_nodes``, read on chain); the JSONL of ``atoma-ops stack history --export``, streamed.

Statuses, in the server's one error shape ``{"error": {"type", "message", …}}``: 400 ``invalid_signature_header``
(no or unreadable ``X-Signature``), 400 ``invalid_timestamp`` (no or unreadable ``X-Timestamp-Ms``), 401
``invalid_signature`` (does not verify over this request), 401 ``signature_expired`` (timestamp outside the
window), 403 ``not_allowed`` (a valid signer who may not read this), 400 ``invalid_parameter`` (a bad ``after`` /
``limit``, a repeated parameter: the field ``param`` names it), 404 ``history_not_found``. Nothing about the
signature is logged.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from ..protocol.constants import U64_MAX
from ..protocol.node_http import SIGNATURE_HEADER
from ..protocol.node_reads import (
    DEFAULT_LIMIT, HISTORY_PATH, JSONL_MEDIA_TYPE, MAX_LIMIT, MAX_SKEW_MS, TIMESTAMP_HEADER, USAGE_PATH, read_hash,
)
from ..wallet import InvalidSignatureError, MalformedSignatureError, verify_hash_signature
from .history import jsonl_lines
from .metering import BadSignature, MissingSignature, ServingError
from .usage_feed import ensure_usage_feed, usage_page


class InvalidTimestamp(ServingError):
    status, type = 400, "invalid_timestamp"


class SignatureExpired(ServingError):
    """A signed read whose timestamp is outside the node's window: a signature captured earlier is not replayable."""

    status, type = 401, "signature_expired"


class NotAllowed(ServingError):
    """A valid signature from an address that may not read this."""

    status, type = 403, "not_allowed"


class InvalidParameter(ServingError):
    status, type = 400, "invalid_parameter"


class HistoryNotFound(ServingError):
    status, type = 404, "history_not_found"


def _same(a: str | None, b: str | None) -> bool:
    return a is not None and b is not None and a.lower() == b.lower()


def _query(request: Request) -> dict[str, str]:
    params = request.query_params
    for name in params.keys():
        if len(params.getlist(name)) > 1:
            raise InvalidParameter(f"the query parameter {name!r} is given more than once", param=name)
    return dict(params.items())


def signed_reader(request: Request, query: dict[str, str], node_address: str, *, now_ms: int | None = None) -> str:
    """The address that signed this read (``protocol.node_reads``; ``query`` as :func:`_query` read it), or the
    read's refusal: 400 without a readable ``X-Signature`` or ``X-Timestamp-Ms``, 401 when it does not verify or its
    time is outside the window."""
    header = (request.headers.get(SIGNATURE_HEADER) or "").strip()
    if not header:
        raise MissingSignature(f"the {SIGNATURE_HEADER} header (the reader's signature of this request) is missing")
    stamp = (request.headers.get(TIMESTAMP_HEADER) or "").strip()
    if not stamp.isdigit():
        raise InvalidTimestamp(f"the {TIMESTAMP_HEADER} header must be the signing time in ms since the Unix epoch")
    now = now_ms if now_ms is not None else int(time.time() * 1000)
    skew = int(stamp) - now
    digest = read_hash(request.method, request.url.path, query, node_address, int(stamp))
    try:
        signer = verify_hash_signature(digest, header)
    except MalformedSignatureError as exc:
        raise MissingSignature(f"{SIGNATURE_HEADER} cannot be read: {exc}") from None
    except InvalidSignatureError:
        raise BadSignature(
            f"{SIGNATURE_HEADER} does not verify over this request (method, path, query, node {node_address}, "
            f"{TIMESTAMP_HEADER})"
        ) from None
    if abs(skew) > MAX_SKEW_MS:
        raise SignatureExpired(
            f"the request was signed {abs(skew) // 1000} s {'ahead of' if skew > 0 else 'before'} this node's clock; "
            f"a signed read is accepted within {MAX_SKEW_MS // 1000} s: sign it again",
            max_skew_ms=MAX_SKEW_MS,
        )
    return signer


def _int_param(query: dict[str, str], name: str, default: int, low: int, high: int) -> int:
    text = query.get(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise InvalidParameter(f"{name} must be an integer {low}..{high}, got {text!r}", param=name) from None
    if not low <= value <= high:
        raise InvalidParameter(f"{name} must be an integer {low}..{high}, got {value}", param=name)
    return value


async def may_read_history(service: Any, stack_small_id: int, signer: str) -> bool:
    """The node's operator, the stack's owner, or a node asked to attest it (module doc)."""
    if _same(signer, service.address):
        return True
    facts = await asyncio.to_thread(service.store.facts, stack_small_id)
    owner = facts.owner if facts is not None else None
    if owner is None:
        stack = await service.chain.get_stack(stack_small_id)
        owner = stack.owner if stack is not None else None
    if _same(signer, owner):
        return True
    ticket = await service.chain.get_ticket(stack_small_id)
    if ticket is None or not ticket.requested_attestation_nodes:
        return False
    requested = set(ticket.requested_attestation_nodes)
    return any(b.kind == "NodeBadge" and b.small_id in requested for b in await service.chain.badges(signer))


async def _stream(lines: list[str]) -> AsyncIterator[bytes]:
    for line in lines:
        yield line.encode("utf-8")


def node_data_router(service: Any) -> APIRouter:
    """The two read endpoints around a NodeService (installs the store's usage feed on first use)."""
    feed = ensure_usage_feed(service.store.path)
    router = APIRouter()

    @router.get(USAGE_PATH)
    async def served_usage(request: Request) -> JSONResponse:
        query = _query(request)
        signer = signed_reader(request, query, service.address)
        if not _same(signer, service.address):
            raise NotAllowed(
                f"{signer} may not read node {service.node_small_id}'s usage: only its operator "
                f"({service.address}) may"
            )
        unknown = sorted(set(query) - {"after", "limit"})
        if unknown:
            raise InvalidParameter(f"unknown query parameter {unknown[0]!r} (after, limit)", param=unknown[0])
        after = _int_param(query, "after", 0, 0, 2**63 - 1)
        limit = _int_param(query, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
        page = await asyncio.to_thread(usage_page, service.store.path, feed, after, limit)
        return JSONResponse({"node_small_id": service.node_small_id, "node": service.address, **page.to_json()})

    @router.get(HISTORY_PATH)
    async def stack_history(stack_small_id: int, request: Request) -> StreamingResponse:
        query = _query(request)
        signer = signed_reader(request, query, service.address)
        if query:
            name = sorted(query)[0]
            raise InvalidParameter(f"unknown query parameter {name!r} (the history takes none)", param=name)
        if not 0 <= stack_small_id <= U64_MAX:
            raise InvalidParameter(f"stack_small_id must be an integer 0..2^64-1, got {stack_small_id}",
                                   param="stack_small_id")
        if not await may_read_history(service, stack_small_id, signer):
            raise NotAllowed(
                f"{signer} may not read stack {stack_small_id}'s history: only the node's operator, the stack's "
                "owner and the nodes asked to attest it may"
            )
        history = await asyncio.to_thread(service.store.history, stack_small_id)
        if not history.entries:
            raise HistoryNotFound(f"node {service.node_small_id} has served no request of stack {stack_small_id}",
                                  stack_small_id=stack_small_id)
        return StreamingResponse(_stream(list(jsonl_lines(history))), media_type=JSONL_MEDIA_TYPE)

    return router
