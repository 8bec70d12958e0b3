"""Stage 4, buy-stack: one stack per key, and which of the wallet's nodes it was sold to.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from ..chain.port import Chain
from ..journal import (
    Intent,
    JournalStore,
    execute_intent,
)
from .common import StageError, checked_args, node_small_ids, small_id_in, tx_of


@dataclass
class BoughtStack:
    stack_small_id: int
    selected_node_id: int
    digest: str | None


async def buy_stack(
    chain: Chain, journal: JournalStore, buyer: str, *, key: str, task_small_id: int, num_compute_units: int, price: int
) -> BoughtStack:
    """Buy one stack per ``key`` (a re-run returns the stack bought the first time, even once it is claimed)."""
    args = checked_args("acquire_new_stack_entry", {"task_small_id": task_small_id, "num_compute_units": num_compute_units, "price": price})
    result = await execute_intent(
        chain, journal, Intent(f"acquire_new_stack_entry:{key}", "acquire_new_stack_entry", buyer, args)
    )
    tx = await tx_of(chain, result)
    return BoughtStack(
        small_id_in(tx, "StackCreatedEvent", "stack_small_id"),
        small_id_in(tx, "StackCreatedEvent", "selected_node_id"),
        tx.digest,
    )


async def alias_of_node(chain: Chain, node_small_id: int, candidates: Sequence[str]) -> str:
    """Which of the wallet's ``candidates`` (aliases or addresses) holds the NodeBadge ``node_small_id``."""
    for name in candidates:
        address = chain.wallet.resolve(name)  # type: ignore[attr-defined]
        if node_small_id in await node_small_ids(chain, address):
            return name
    raise StageError(f"node {node_small_id} is none of this wallet's nodes ({', '.join(candidates)})")
