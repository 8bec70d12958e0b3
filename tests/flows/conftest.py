"""Flow tests share the session's Prefect test harness (``prefect_api`` in ``tests/conftest.py``)."""

from __future__ import annotations



import pytest  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _prefect(prefect_api):
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
