"""A Chain port wrapper for tests: forwards everything, can rewrite transaction effects."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Callable

from atoma_ops.chain.types import ChainEvent, EventId, EventPage, TxResult


class ChainProxy:
    def __init__(self, inner, *, tx_rewrite: Callable[[TxResult], TxResult | None] | None = None):
        self.inner = inner
        self.tx_rewrite = tx_rewrite

    def __getattr__(self, name):
        return getattr(self.inner, name)

    async def get_transaction(self, digest: str):
        tx = await self.inner.get_transaction(digest)
        if tx is not None and self.tx_rewrite is not None:
            return self.tx_rewrite(tx)
        return tx


def with_balance_changes(tx: TxResult, changes: dict[str, int]) -> TxResult:
    return dataclasses.replace(tx, balance_changes=dict(changes))


async def all_events(chain, limit: int = 50) -> tuple[list[ChainEvent], dict[str, TxResult]]:
    events: list[ChainEvent] = []
    cursor: EventId | None = None
    while True:
        page: EventPage = await chain.events(cursor, limit)
        events.extend(page.events)
        cursor = page.next_cursor
        if not page.has_next_page:
            break
    digests = sorted({e.id.tx_digest for e in events})
    txs = dict(zip(digests, await asyncio.gather(*(chain.get_transaction(d) for d in digests))))
    return events, txs
