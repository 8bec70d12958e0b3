"""``ListEvents`` of the loopback Sui node: the localnet's events in ledger order, with opaque cursors and
Sui's event filters. See :mod:`atoma_ops.testing.sui.execute` for the cursor format and what is served.
"""

from __future__ import annotations

from typing import Callable

import betterproto2
import grpclib.const
import pysui.sui.sui_grpc.suimsgs.sui.rpc.v2 as sui
from grpclib.exceptions import GRPCError

from atoma_ops.chain._json import loads
from atoma_ops.chain.localnet.engine import Localnet
from atoma_ops.chain.sui.movetypes import canonical_type
from atoma_ops.wallet import normalize_address

from .effects import event_message
from .objects import (
    SCAN_CHUNK,
    mask_fields,
    refuse,
)

DEFAULT_EVENT_LIMIT = 50
MAX_EVENT_LIMIT = 1000
_CURSOR_TAG = b"\x02"
_MAX_EVENT_INDEX = 2**32 - 1


def event_cursor(checkpoint: int, event_index: int) -> bytes:
    """The ListEvents cursor of a ledger position: ``0x02 ‖ u64-BE checkpoint ‖ u32-BE event index``."""
    return _CURSOR_TAG + int(checkpoint).to_bytes(8, "big") + int(event_index).to_bytes(4, "big")


def parse_event_cursor(cursor: bytes) -> tuple[int, int]:
    """``(checkpoint, event index)`` of a :func:`event_cursor`; ValueError for anything else."""
    raw = bytes(cursor)
    if len(raw) != 13 or raw[:1] != _CURSOR_TAG:
        raise ValueError("not a loopback event cursor")
    return int.from_bytes(raw[1:9], "big"), int.from_bytes(raw[9:], "big")



# --------------------------------------------------------------------------------------------------- events
def _event_predicate(flt: sui.EventFilter | None, package_id: str) -> Callable[[str, str], bool]:
    """``(sender, event type) -> bool`` for an EventFilter. Every event of the localnet is emitted by
    ``<package_id>::db``, so ``emit_module`` literals compare with that."""
    if flt is None:
        return lambda sender, type_: True
    if not flt.terms:
        raise refuse("an event filter must have at least one term")
    terms = []
    for term in flt.terms:
        if not term.literals:
            raise refuse("an event filter term must have at least one literal")
        terms.append([_literal(lit, package_id) for lit in term.literals])
    return lambda sender, type_: any(all(lit(sender, type_) for lit in term) for term in terms)


def _parse_path(text: str | None, what: str) -> list[str]:
    if not text:
        raise refuse(f"{what} is required")
    head, sep, rest = text.strip().partition("::")
    try:
        address = normalize_address(head)
    except ValueError:
        raise refuse(f"invalid {what} {text!r}") from None
    return [address] + (rest.split("::") if sep else [])


def _literal(lit: sui.EventLiteral, package_id: str) -> Callable[[str, str], bool]:
    which, value = betterproto2.which_one_of(lit, "predicate")
    if which == "sender":
        try:
            address = normalize_address(value.address or "")
        except ValueError:
            raise refuse(f"invalid sender {value.address!r}") from None
        test = lambda sender, type_: sender == address  # noqa: E731
    elif which == "emit_module":
        parts = _parse_path(value.module, "emit_module.module")
        if len(parts) > 2:
            raise refuse(f"emit_module {value.module!r} is not package[::module]")
        emitter = [package_id, "db"]
        test = lambda sender, type_: emitter[: len(parts)] == parts  # noqa: E731
    elif which == "event_type":
        wanted = (value.event_type or "").strip()
        if "<" in wanted:
            exact = canonical_type(wanted)
            test = lambda sender, type_: canonical_type(type_) == exact  # noqa: E731
        else:
            parts = _parse_path(wanted, "event_type.event_type")
            if len(parts) > 3:
                raise refuse(f"invalid event_type {wanted!r}")
            test = lambda sender, type_: canonical_type(type_).split("<", 1)[0].split("::")[: len(parts)] == parts  # noqa: E731
    elif which == "event_stream_head":
        raise GRPCError(grpclib.const.Status.UNIMPLEMENTED, "event_stream_head filters are not served")
    else:
        raise refuse("an event literal needs a predicate")
    if lit.negated:
        return lambda sender, type_: not test(sender, type_)
    return test


def list_events(net: Localnet, request: sui.ListEventsRequest) -> list[sui.ListEventsResponse]:
    """Every frame of one ListEvents response (at most ``limit`` events + 1)."""
    options = request.options or sui.QueryOptions()
    if options.ordering == sui.Ordering.DESCENDING:
        raise GRPCError(grpclib.const.Status.UNIMPLEMENTED, "descending ListEvents is not served by the loopback node")
    limit = min(int(options.limit or DEFAULT_EVENT_LIMIT), MAX_EVENT_LIMIT)
    try:
        after = parse_event_cursor(options.after) if options.after else None
        before = parse_event_cursor(options.before) if options.before else None
    except ValueError:
        raise refuse("invalid cursor in options.after/before") from None
    package_id = normalize_address(net.package_id)
    matches = _event_predicate(request.filter, package_id)
    fields = mask_fields(request.read_mask, None)  # type: ignore[arg-type]

    tip = int(net.conn.execute("SELECT COALESCE(MAX(seq), 0) FROM transactions").fetchone()[0])
    start = int(request.start_checkpoint or 0)
    stop = tip + 1 if request.end_checkpoint is None else min(int(request.end_checkpoint), tip + 1)  # exclusive
    lo = max(after or (-1, _MAX_EVENT_INDEX), (start - 1, _MAX_EVENT_INDEX))  # exclusive lower position
    first_full = lo[0] + 1  # the first checkpoint this scan covers whole

    def watermark(position: tuple[int, int], covered: int) -> sui.Watermark:
        return sui.Watermark(cursor=event_cursor(*position),
                             checkpoint=covered if covered >= first_full else None)

    frames: list[sui.ListEventsResponse] = []
    found = 0
    cursor = lo
    while True:
        rows = net.conn.execute(
            "SELECT t.seq, e.event_seq, e.tx_digest, e.type, e.sender, e.parsed_json "
            "FROM events e JOIN transactions t ON t.digest = e.tx_digest "
            "WHERE (t.seq > ?1 OR (t.seq = ?1 AND e.event_seq > ?2)) AND t.seq < ?3 "
            "ORDER BY t.seq, e.event_seq LIMIT ?4",
            (cursor[0], cursor[1], stop, SCAN_CHUNK),
        ).fetchall()
        for checkpoint, index, digest, type_, sender, parsed in rows:
            position = (int(checkpoint), int(index))
            if before is not None and position >= before:
                frames.append(sui.ListEventsResponse(
                    watermark=watermark(before, before[0] - 1),
                    end=sui.QueryEnd(reason=sui.QueryEndReason.CURSOR_BOUND),
                ))
                return frames
            if not matches(sender, type_):
                continue
            event = event_message(package_id, sender, type_, loads(parsed), position[0], digest, position[1], fields)
            frame = sui.ListEventsResponse(event=event, watermark=watermark(position, position[0] - 1))
            frames.append(frame)
            found += 1
            if found == limit:
                frame.end = sui.QueryEnd(reason=sui.QueryEndReason.ITEM_LIMIT)
                return frames
        if len(rows) < SCAN_CHUNK:
            break
        cursor = (int(rows[-1][0]), int(rows[-1][1]))
    last = stop - 1
    if before is not None and before <= (last, _MAX_EVENT_INDEX):
        reason, frontier, covered = sui.QueryEndReason.CURSOR_BOUND, before, before[0] - 1
    else:
        bounded = request.end_checkpoint is not None and int(request.end_checkpoint) <= tip + 1
        reason = sui.QueryEndReason.CHECKPOINT_BOUND if bounded else sui.QueryEndReason.LEDGER_TIP
        frontier, covered = (last, _MAX_EVENT_INDEX), last
    frontier = max(frontier, lo)  # never behind where the caller resumed
    frames.append(sui.ListEventsResponse(watermark=watermark(frontier, covered), end=sui.QueryEnd(reason=reason)))
    return frames
