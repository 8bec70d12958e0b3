"""Stage 3, register-and-subscribe-node: a NodeBadge once per address, a subscription at the asked price.
"""

from __future__ import annotations

import asyncio
import weakref

from ..chain.port import Chain
from ..journal import (
    Intent,
    JournalStore,
    execute_intent,
    resolve_pending,
)
from .common import checked_args, node_small_ids


async def register_node(chain: Chain, journal: JournalStore, node: str) -> int:
    """Register ``node`` (alias or address) unless it already holds a NodeBadge; returns its small id."""
    address = chain.wallet.resolve(node)  # type: ignore[attr-defined]
    ids = await node_small_ids(chain, address)
    if ids:  # a registration a crash left pending is recorded, not left pending for ever
        await resolve_pending(chain, journal, keys=[f"register_node_entry:{address}"], resend=False)
        return ids[0]

    async def registered() -> bool:
        return bool(await node_small_ids(chain, address))

    # each register_node_entry mints another NodeBadge. Processes and hosts that all saw no badge yet: the journal's
    # claim lets one of them submit, the others take its outcome. Callers of one process also take turns here, so
    # the later ones find the badge in their preflight instead of signing and waiting on the claim
    async with _registering(address):
        await execute_intent(chain, journal, Intent(f"register_node_entry:{address}", "register_node_entry", address, done=registered))
    return (await node_small_ids(chain, address))[0]


_register_locks: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, asyncio.Lock]]" = weakref.WeakKeyDictionary()


def _registering(address: str) -> asyncio.Lock:
    """This event loop's lock for registering ``address``."""
    return _register_locks.setdefault(asyncio.get_running_loop(), {}).setdefault(address, asyncio.Lock())


async def subscribe_node(chain: Chain, journal: JournalStore, node: str, *, task_small_id: int, price: int) -> int:
    """Subscribe the node to the task at ``price`` per one million compute units; a subscription at another price
    is updated. Returns the node's small id."""
    checked_args("subscribe_node_to_task", {"task_small_id": task_small_id, "price_per_one_million_compute_units": price})
    address = chain.wallet.resolve(node)  # type: ignore[attr-defined]
    node_id = await register_node(chain, journal, address)

    async def current_price() -> int | None:
        for s in await chain.subscriptions(task_small_id):
            if s.node_small_id == node_id:
                return s.price_per_one_million_compute_units
        return None

    async def at_price() -> bool:
        return await current_price() == price

    existing = await current_price()
    if existing == price:
        await resolve_pending(
            chain, journal, keys=[f"{f}:{task_small_id}:{node_id}:{price}" for f in ("subscribe_node_to_task", "update_node_subscription")],
            resend=False,
        )
        return node_id
    function = "subscribe_node_to_task" if existing is None else "update_node_subscription"
    args = {"task_small_id": task_small_id, "price_per_one_million_compute_units": price, "node_small_id": node_id}
    await execute_intent(
        chain, journal,
        Intent(f"{function}:{task_small_id}:{node_id}:{price}", function, address, args, done=at_price, repeatable=True),
    )
    return node_id
