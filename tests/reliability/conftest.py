"""The reliability harness's fast slice (the whole harness is ``make reliability``). Its tests import the harness
(``reliability/`` at the repository's root) and the flow tests' kit, and share the session's Prefect test harness."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
for path in (ROOT, ROOT / "tests" / "flows"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import pytest  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _prefect(prefect_api):
    yield
