"""tasks/signer.py on the session's Prefect API (a real server on SQLite): a chain write asks for its address's slot
once the server has recorded its task's state, holds the one slot while it signs, and frees it after."""

from __future__ import annotations

import asyncio
import uuid
from contextlib import asynccontextmanager

import httpx

from prefect import flow, task
from prefect.client.orchestration import get_client
from prefect.context import TaskRunContext
from prefect.exceptions import ObjectNotFound

from tasks import signer

ADDRESS = "0x" + "5e" * 32


async def active_slots() -> int:
    async with get_client() as client:
        return (await client.read_global_concurrency_limit_by_name(signer.limit_name(ADDRESS))).active_slots


@task
async def chain_write() -> dict:
    """What a chain-writing task does around its write, and what the server says meanwhile."""
    async with signer.signer_turn(ADDRESS):
        held = await active_slots()
    return {"held": held, "after": await active_slots()}


@flow
async def three_writes() -> list[dict]:
    return [await chain_write() for _ in range(3)]


def test_a_write_asks_for_its_slot_once_its_task_state_is_recorded_and_frees_it(monkeypatch):
    asked: list[tuple] = []  # (the state the server held for the run when the slot was asked for, the run's own)
    slot = signer._slot

    @asynccontextmanager
    async def spied(name: str):
        run = TaskRunContext.get().task_run
        async with get_client() as client:
            try:
                recorded = (await client.read_task_run(run.id)).state_id
            except ObjectNotFound:
                recorded = None
        asked.append((recorded, run.state_id))
        async with slot(name):
            yield

    monkeypatch.setattr(signer, "_slot", spied)
    writes = asyncio.run(three_writes())
    assert writes == [{"held": 1, "after": 0}] * 3
    assert len(asked) == 3
    for recorded, own in asked:  # not an earlier state of the run, nor no record at all
        assert own is not None and recorded == own


def test_outside_a_task_run_nothing_is_awaited():
    assert asyncio.run(signer._task_state_recorded()) is False


@task
async def wait_in_a_task(lose_the_record: bool) -> bool:
    if lose_the_record:
        TaskRunContext.get().task_run.state_id = uuid.uuid4()  # a state the server will never hold
    return await signer._task_state_recorded()


@flow
async def wait_in_a_flow(lose_the_record: bool = False) -> bool:
    return await wait_in_a_task(lose_the_record)


def test_a_record_that_never_comes_ends_the_wait(monkeypatch):
    monkeypatch.setattr(signer, "RECORD_WAIT_S", 0.3)
    assert asyncio.run(wait_in_a_flow(lose_the_record=True)) is False


def test_an_api_that_fails_the_read_ends_the_wait_at_once(monkeypatch):
    """The wait only spares a retry: an API error there goes on to the slot's own call, which reports or succeeds."""
    from prefect.client.orchestration import PrefectClient

    async def refused(self, task_run_id):
        raise httpx.ConnectError("refused")

    monkeypatch.setattr(PrefectClient, "read_task_run", refused)
    assert asyncio.run(wait_in_a_flow()) is False
