"""Stage 2, create-task: a task once per key, and the admin's Sampling Consensus settings.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..chain.port import Chain
from ..journal import (
    Intent,
    JournalStore,
    execute_intent,
    resolve_pending,
)
from .common import checked_args, small_id_in, tx_of


async def create_task(
    chain: Chain,
    journal: JournalStore,
    admin: str,
    *,
    key: str,
    role: int = 0,
    model_name: str | None = None,
    security_level: int | None = None,
    minimum_reputation_score: int | None = None,
    is_public: bool = True,
) -> int:
    """Create a task (admin) once per ``key``; returns its small id (the same on every re-run)."""
    args = checked_args("create_task_entry", {
        "role": role,
        "model_name": model_name,
        "security_level": security_level,
        "minimum_reputation_score": minimum_reputation_score,
        "is_public": is_public,
    })
    result = await execute_intent(chain, journal, Intent(f"create_task_entry:{key}", "create_task_entry", admin, args))
    return small_id_in(await tx_of(chain, result), "TaskRegisteredEvent", "task_small_id")


async def set_cross_validation(
    chain: Chain, journal: JournalStore, admin: str, *, probability_permille: int | None, extra_nodes_count: int | None
) -> DbConfigChange:
    """Set the Sampling Consensus lottery (admin setters), skipping values already in place."""
    config = await chain.db_config()
    done: dict[str, int] = {}
    for setter, value, current in (
        ("set_cross_validation_probability_permille", probability_permille, config.cross_validation_probability_permille),
        ("set_cross_validation_extra_nodes_count", extra_nodes_count, config.cross_validation_extra_nodes_count),
    ):
        if value is None:
            continue
        if value == current:  # in place; a write a crash left pending is recorded, never re-sent
            await resolve_pending(chain, journal, keys=[f"{setter}:{value}"], resend=False)
            continue
        checked_args(setter, {"value": value})

        async def already(setter_=setter, value_=value) -> bool:
            return getattr(await chain.db_config(), setter_.removeprefix("set_")) == value_

        await execute_intent(
            chain, journal, Intent(f"{setter}:{value}", setter, admin, {"value": value}, done=already, repeatable=True)
        )
        done[setter.removeprefix("set_")] = value
    return DbConfigChange(done)


@dataclass
class DbConfigChange:
    changed: dict[str, int]
