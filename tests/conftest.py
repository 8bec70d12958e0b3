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
# an empty HuggingFace cache of the session's own: the openai engine counts with a model's tokenizer found there
# (load_engine's tokenizer "auto"), so what the developer's cache holds must not change what a test counts
_HF_HUB_CACHE = tempfile.mkdtemp(prefix="atoma-ops-hf-hub-")
atexit.register(shutil.rmtree, _HF_HUB_CACHE, True)
os.environ["HF_HUB_CACHE"] = _HF_HUB_CACHE

import pytest  # noqa: E402

from atoma_ops.home import LocalnetHome  # noqa: E402

# ---------------------------------------------------------------------------------------------- xdist scheduling
# `make test` runs two workers with `--dist loadfile`: each file is one unit of work, handed to whichever worker runs
# low. xdist's own order (files with the most tests first) started the slowest files, which hold few tests, last,
# so one worker ran them alone at the end. The files below run first, slowest first (seconds on 2 busy cores, with
# the share of the session's Prefect harness and CPU-engine loads they pay; the rest take under ~30 s each and
# keep their collection order): the workers end within a short file of each other.
SLOWEST_FIRST = (
    "tests/flows/test_multi_host.py",  # ~95 (two hosts' workers on a shared server)
    "tests/flows/test_alerts.py",  # with test_deployment.py, one unit (SAME_UNIT): ~120
    "tests/flows/test_deployment.py",
    "tests/serving/test_cpu_engine.py",  # ~100
    "tests/flows/test_flows.py",  # ~100
    "tests/flows/test_flows_sui.py",  # ~70
    "tests/reliability/test_load.py",  # ~65
    "tests/reliability/test_bad_inputs.py",  # ~60 (the whole table, once, in a module fixture)
    "tests/flows/test_crash.py",  # ~55
    "tests/reliability/test_crash_harness.py",  # ~50
    "tests/serving/test_openai_sdk.py",  # ~50
    "tests/serving/test_cli_serving.py",  # ~45
    "tests/flows/test_serve_remote.py",  # ~30
    "tests/serving/test_attest.py",  # ~30
    "tests/chain/test_state_machine.py",  # ~30 (400 examples)
    "tests/flows/test_events.py",  # ~30
    "tests/flows/test_legible.py",  # ~30
)
# Files that run on the same worker, one after the other: they share that worker's real `prefect server`
# (tests/flows/conftest.py) instead of each starting one.
SAME_UNIT = {"tests/flows/test_alerts.py": "prefect-server", "tests/flows/test_deployment.py": "prefect-server"}


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    """On an xdist worker, the files of ``SLOWEST_FIRST`` first, in its order (every worker sorts alike, so the
    collections the controller compares agree); a file's tests keep their order."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    rank = {path: i for i, path in enumerate(SLOWEST_FIRST)}
    position = {id(item): i for i, item in enumerate(items)}
    items.sort(key=lambda item: (rank.get(item.nodeid.split("::", 1)[0], len(rank)), position[id(item)]))


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """``--dist loadfile`` in the order the workers collected (no reordering by test count), with the files of
    ``SAME_UNIT`` in one unit."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class SlowestFirst(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = super()._split_scope(nodeid)
            return SAME_UNIT.get(path, path)

    config.option.loadscopereorder = False
    return SlowestFirst(config, log)


@pytest.fixture(scope="session")
def prefect_api():
    """The session's Prefect API (started once, ~10 s), its client's first retries of a 503 made quick
    (tests/prefect_retry.py: the harness's SQLite server answers many signer-slot calls 503 under load)."""
    from prefect.testing.utilities import prefect_test_harness

    from tests.prefect_retry import quick_first_retries

    with prefect_test_harness(server_startup_timeout=120), quick_first_retries():
        _snapshot_migrated_database()
        yield


#: a copy of the harness's database as it is once migrated, before any test wrote to it (``prefect_api``)
PREFECT_DB_TEMPLATE = os.path.join(_PREFECT_HOME, "migrated-template.db")


def _snapshot_migrated_database() -> None:
    """Copy the harness's fresh database (migrated, nothing else in it) for the real ``prefect server`` the flow
    tests start (tests/flows/conftest.py): a server that finds its database at the latest migration skips migrating,
    ~10-30 s of a start on 2 cores. SQLite's backup API: a consistent copy while the harness holds it open."""
    import sqlite3

    from prefect.settings import PREFECT_SERVER_DATABASE_CONNECTION_URL

    url = PREFECT_SERVER_DATABASE_CONNECTION_URL.value() or ""
    path = url.split(":///", 1)[-1] if url.startswith("sqlite") else ""
    if not path or not os.path.exists(path):
        return
    source, target = sqlite3.connect(path), sqlite3.connect(PREFECT_DB_TEMPLATE)
    try:
        source.backup(target)
    finally:
        target.close()
        source.close()


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
