"""Fixtures for the ledger tests: the hand-computed scenario (scenario.py) on a real localnet, synced once."""

from __future__ import annotations


import pytest


from tests.ledger.scenario import Built, build  # noqa: E402


from atoma_ops.ledger import Ledger  # noqa: E402

@pytest.fixture(scope="session")
def scenario(tmp_path_factory) -> Built:
    b = build(tmp_path_factory.mktemp("scenario"))
    yield b
    b.close()


@pytest.fixture(scope="session")
def synced(scenario, tmp_path_factory) -> Ledger:
    """The scenario's ledger after one full sync (tests must not write to it)."""
    ledger = Ledger(tmp_path_factory.mktemp("synced") / "ledger.duckdb")
    scenario.net.run(ledger.sync(scenario.net.chain))
    return ledger


@pytest.fixture
def fresh(tmp_path) -> Built:
    """A scenario of one's own (for tests that change the chain or the ledger)."""
    b = build(tmp_path)
    yield b
    b.close()
