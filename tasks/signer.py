"""One signer at a time across processes: a Prefect global concurrency limit per sending address.

On Sui every transaction of a sender pays gas with the sender's coin at its current version. Two transactions
signed at once over the same coin version are an equivocation, and Sui locks the coin until the epoch ends (about a
day). The intent journal already serialises the writes of one process; the deployments (``settlement-run``,
``attestation-watch``, a manual ``stack-lifecycle``) run in separate processes, so every chain-writing task holds the
limit ``signer-<address>`` (one slot) of the Prefect server while it signs and submits.

The slot is held under a lease (Prefect renews it from a background thread while the holder lives): a holder that
crashes or is killed frees its slot when the lease expires, ``LEASE_S`` seconds later at most (plus one pass of the
server's repossessor), instead of blocking the address for good.

The slot is asked for once the server has recorded the task's current state (:func:`_task_state_recorded`): on a
SQLite Prefect server, asking while its task-run recorder writes that state makes one of the two writes fail
("database is locked", a 503), and Prefect's client waits 2 s before asking again, at every chain write (measured on a
local server, 20 writes in a row: 2.1 s each; waiting for the record first, 0.19 s each).
"""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack, asynccontextmanager
from typing import AsyncIterator

import httpx
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, GlobalConcurrencyLimitUpdate
from prefect.concurrency.asyncio import ConcurrencySlotAcquisitionError, concurrency
from prefect.context import TaskRunContext
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
from prefect.settings import PREFECT_API_URL

#: lease of a held slot, renewed every 3/4 of it; a crashed holder frees the address within this (60 s is the
#: shortest lease the Prefect server grants)
LEASE_S = 60.0
#: how long a write waits for the address before it fails (retryable: the task's retries wait again)
WAIT_S = 900.0

#: how long a write waits for the server to record its task's state before asking for the slot anyway, and how often
#: it looks (the record takes ~0.1 s on a local server)
RECORD_WAIT_S = 5.0
RECORD_POLL_S = 0.05

#: limits this process made or found, by API (a process may talk to more than one server)
_known: set[tuple[str | None, str]] = set()


def limit_name(address: str) -> str:
    """The global concurrency limit of one sending address (the address as Sui spells it, ``0x`` + 64 hex)."""
    return f"signer-{address.lower()}"


async def ensure_limit(name: str) -> None:
    """Create the one-slot limit ``name`` unless it exists (two processes may race: the loser finds it made)."""
    key = (PREFECT_API_URL.value(), name)
    if key in _known:
        return
    async with get_client() as client:
        try:
            existing = await client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            try:
                await client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
            except ObjectAlreadyExists:
                pass
        else:
            if existing.limit != 1 or not existing.active:
                await client.update_global_concurrency_limit(name, GlobalConcurrencyLimitUpdate(limit=1, active=True))
    _known.add(key)


async def _task_state_recorded() -> bool:
    """Wait until the server holds the current task run's state, as this process set it (at most
    :data:`RECORD_WAIT_S`); True once it does, False outside a task run or past the wait (then go ahead anyway: the
    slot's call is only slower, never wrong)."""
    context = TaskRunContext.get()
    if context is None or context.task_run.state_id is None:
        return False
    run_id, state_id = context.task_run.id, context.task_run.state_id
    loop = asyncio.get_running_loop()
    deadline = loop.time() + RECORD_WAIT_S
    async with get_client() as client:
        while True:
            try:
                if (await client.read_task_run(run_id)).state_id == state_id:
                    return True
            except ObjectNotFound:  # not recorded yet: the recorder creates the run from its first event
                pass
            except httpx.HTTPError:  # the API failing a read: the slot's own call will say so, or succeed
                return False
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(RECORD_POLL_S)


@asynccontextmanager
async def signer_turn(address: str) -> AsyncIterator[None]:
    """Hold ``address``'s signing slot for the duration of the block (every chain write of every deployment)."""
    name = limit_name(address)
    await ensure_limit(name)
    await _task_state_recorded()
    async with AsyncExitStack() as held:
        try:
            await held.enter_async_context(_slot(name))
        except ConcurrencySlotAcquisitionError:  # deleted on the server since this process made it: make it again
            _known.discard((PREFECT_API_URL.value(), name))
            await ensure_limit(name)
            await held.enter_async_context(_slot(name))
        yield


def _slot(name: str):
    return concurrency(name, occupy=1, timeout_seconds=WAIT_S, lease_duration=LEASE_S, strict=True)
