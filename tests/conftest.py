"""Shared fixtures: a fresh localnet home in ``tmp_path`` (init is ~15 ms: five keys and one SQLite file), and the
session's one Prefect test harness (a real ephemeral API on a temporary SQLite database), which the folders that run
flows (``flows/``, ``reliability/``) turn on.

``PREFECT_HOME`` is a fresh temporary folder for the session (set before Prefect is imported): Prefect keeps cached
task results under ``$PREFECT_HOME/storage``, which would otherwise leak between test runs.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections import deque

_PREFECT_HOME = tempfile.mkdtemp(prefix="atoma-ops-prefect-")
atexit.register(shutil.rmtree, _PREFECT_HOME, True)
os.environ["PREFECT_HOME"] = _PREFECT_HOME
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
# reservation leases (atoma_ops.serving.store): short, so a test that kills a serving process waits seconds, not the
# production default, for its reservations to go stale; children of the tests inherit it
os.environ.setdefault("ATOMA_OPS_RESERVATION_LEASE_S", "3")

import pytest  # noqa: E402

from atoma_ops.home import LocalnetHome  # noqa: E402


@pytest.fixture(scope="session")
def prefect_api():
    """The session's Prefect API (started once, ~10 s)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


class Draws:
    """A scripted ``rng`` for ``Localnet(path, rng=...)``: pops queued u64 draws, then returns ``default``."""

    def __init__(self, default: int = 0):
        self.queue: deque[int] = deque()
        self.default = default
        self.count = 0

    def push(self, *values: int) -> "Draws":
        self.queue.extend(values)
        return self

    def __call__(self) -> int:
        self.count += 1
        return self.queue.popleft() if self.queue else self.default


@pytest.fixture
def localnet_home(tmp_path) -> LocalnetHome:
    """An initialised localnet home (aliases admin, user, node-1, node-2, node-3), epoch 0, no wall-clock epochs."""
    home = LocalnetHome(tmp_path / "localnet")
    localnet, _ = home.init(seed=7)
    localnet.close()
    return home


@pytest.fixture
def draws() -> Draws:
    return Draws()


@pytest.fixture
def chain(localnet_home, draws):
    """A ``LocalnetChain`` on a fresh localnet whose randomness comes from ``draws``."""
    c = localnet_home.open(rng=draws)
    yield c
    c.localnet.close()


@pytest.fixture(scope="session")
def pg_cluster():
    """The session's PostgreSQL cluster (Debian's server binaries, installed when missing; ~2 s to start), on a free
    port of 127.0.0.1 in a temporary folder. Never skipped: without PostgreSQL it fails, saying what to install."""
    from atoma_ops.testing.postgres import PgCluster

    cluster = PgCluster(fsync=False).start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def pg_database(pg_cluster) -> str:
    """A fresh PostgreSQL database for the test module: its URL."""
    return pg_cluster.create_database()
