"""What every stage shares: the stage error, argument checks before anything is journaled, reading a finished
intent's transaction and the small ids it created, a node's badges.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Sequence

from ..chain import codec
from ..chain.errors import ChainError, NotFound
from ..chain.port import Chain
from ..chain.types import TxResult
from ..journal import (
    ActionResult,
)
from ..protocol import abi
from ..protocol.events import decode_event


class StageError(ChainError):
    """A stage cannot go on: what is missing and what to do about it."""

    kind = "StageError"


def checked_args(function: str, args: dict) -> dict:
    """``args`` if each fits its Move type, else :class:`InvalidArgument` (a negative or overflowing amount, a
    non-ASCII model name). Stages check before journaling, so a bad argument leaves no row in the ledger."""
    for param in abi.ENTRY_FUNCTIONS[function]:
        if not param.is_object and param.name in args:
            codec.check_value(param.name, param.type, args[param.name])
    return args


def small_id_in(tx: TxResult, event: str, field_name: str) -> int:
    """A small id of the transaction's ``event`` (decoded by :mod:`atoma_ops.protocol.events`)."""
    return getattr(decode_event(event, tx.event(event).parsed_json), field_name)


async def tx_of(chain: Chain, result: ActionResult) -> TxResult:
    """The transaction of a finished intent: the one it executed, or the one its journal row names."""
    if result.tx is not None:
        return result.tx
    if result.digest is None:
        raise NotFound(f"{result.key}: no transaction recorded")
    tx = await chain.get_transaction(result.digest)
    if tx is None:
        raise NotFound(f"{result.key}: transaction {result.digest} not found on chain")
    return tx


async def node_small_ids(chain: Chain, address: str) -> list[int]:
    """The small ids of the NodeBadges ``address`` holds, smallest first."""
    return sorted(b.small_id for b in await chain.badges(address) if b.kind == "NodeBadge" and b.small_id is not None)


def as_rows(items: Sequence[Any]) -> list[dict]:
    """Stage results as table rows (Prefect artifacts, reports)."""
    return [asdict(i) for i in items]
