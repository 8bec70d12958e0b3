"""The reliability harness's fast slice (the whole harness is ``make reliability``). Its tests import the harness
(``reliability/`` at the repository's root, put on ``sys.path`` by ``tests/conftest.py``) and the flow tests' kit,
and share the session's Prefect test harness."""

from __future__ import annotations

import sys
from pathlib import Path

_FLOW_KIT = str(Path(__file__).resolve().parents[1] / "flows")  # the repository's root is on sys.path already
if _FLOW_KIT not in sys.path:
    sys.path.insert(0, _FLOW_KIT)

import pytest  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _prefect(prefect_api):
    yield
