"""Flow tests share the session's Prefect test harness (``prefect_api`` in ``tests/conftest.py``); the tests that
need a real ``prefect server`` (deployments, workers, automations) share one per test process (``prefect_server``)."""

from __future__ import annotations

import pytest

from tests.conftest import PREFECT_DB_TEMPLATE
from tests.flows.prefect_server import PrefectServer

# The shared server's services: a scheduled run turns Late one second past its time (the alerts test's late run).
# Its scheduler stays off (``prefect_env``): the only runs are those the tests create.
SERVER_ENV = {
    "PREFECT_SERVER_SERVICES_LATE_RUNS_AFTER_SECONDS": "1",
    "PREFECT_SERVER_SERVICES_LATE_RUNS_LOOP_SECONDS": "1",
}


@pytest.fixture(scope="session", autouse=True)
def _prefect(prefect_api):
    yield


@pytest.fixture(scope="session")
def _shared_prefect_server(tmp_path_factory):
    """Started the first time a test of this process asks for it (~10 s; on a copy of the harness's migrated database,
    ``PREFECT_DB_TEMPLATE``, where there is one: migrating a fresh one took another 10-30 s)."""
    server = PrefectServer(tmp_path_factory.mktemp("prefect-server"), SERVER_ENV, database=PREFECT_DB_TEMPLATE)
    try:
        yield server.start().wait()
    finally:
        server.stop()


@pytest.fixture
def prefect_server(_shared_prefect_server):
    """A real ``prefect server`` (subprocess, own ``PREFECT_HOME`` and database, 127.0.0.1), empty when the test
    starts: whatever a test leaves on it is deleted after it (``PrefectServer.reset``)."""
    yield _shared_prefect_server
    _shared_prefect_server.reset()


@pytest.fixture
def network(tmp_path):
    """An ``AtomaNetwork`` block over a fresh localnet home (manual epochs: waiting stages advance them)."""
    from atoma_ops.home import LocalnetHome
    from blocks import AtomaNetwork

    home = tmp_path / "localnet"
    localnet, _ = LocalnetHome(home).init(seed=7)
    localnet.close()
    return AtomaNetwork(home=str(home))
