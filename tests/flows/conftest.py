"""Flow tests share one Prefect test harness (a real ephemeral API on a temporary SQLite database) per session.

``PREFECT_HOME`` is a fresh temporary folder for the session (set before Prefect is imported): Prefect keeps cached
task results under ``$PREFECT_HOME/storage``, which would otherwise leak between test runs.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

_PREFECT_HOME = tempfile.mkdtemp(prefix="atoma-ops-prefect-")
atexit.register(shutil.rmtree, _PREFECT_HOME, True)
os.environ["PREFECT_HOME"] = _PREFECT_HOME
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

sys.path.insert(0, str(Path(__file__).parent))

import pytest  # noqa: E402
from prefect.testing.utilities import prefect_test_harness  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session", autouse=True)
def prefect_api():
    """The session's Prefect API (started once, ~10 s)."""
    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def network(tmp_path):
    """An ``AtomaNetwork`` block over a fresh localnet home (manual epochs: waiting stages advance them)."""
    from atoma_ops.home import LocalnetHome
    from blocks import AtomaNetwork

    home = tmp_path / "localnet"
    localnet, _ = LocalnetHome(home).init(seed=7)
    localnet.close()
    return AtomaNetwork(home=str(home))
