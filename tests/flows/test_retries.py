"""The chain-writing tasks' retry policy: retryable and in-doubt errors are retried, terminal ones are not."""

from __future__ import annotations

import asyncio

import pytest
from prefect import flow, task

from atoma_ops.chain.errors import MoveAbort
from atoma_ops.journal import InDoubt
from atoma_ops.ledger.store import LedgerBusy
from tasks.runtime import CHAIN_WRITE

ERRORS = {
    "connection dropped": (ConnectionError("reset by peer"), 3),
    "ledger busy": (LedgerBusy("held by pid 1"), 3),
    "in doubt": (InDoubt("submitted, outcome unknown", "D1"), 3),
    "move abort": (MoveAbort.db("EStackDisputePeriodIsNotOver"), 1),
    "bad value": (ValueError("not a number"), 1),
}


@pytest.mark.parametrize("name", list(ERRORS))
def test_retry_condition(name):
    error, expected_attempts = ERRORS[name]
    attempts = []

    @task(**{**CHAIN_WRITE, "retry_delay_seconds": 0, "retry_jitter_factor": None})
    async def write() -> str:
        attempts.append(1)
        if len(attempts) < 3:
            raise error
        return "done"

    @flow
    async def run_write() -> str:
        return await write()

    if expected_attempts == 3:
        assert asyncio.run(run_write()) == "done"
    else:
        with pytest.raises(type(error)):
            asyncio.run(run_write())
    assert len(attempts) == expected_attempts
