"""The reliability harness's fast slice (the whole harness is ``make reliability``). Its tests import the harness
(``reliability/`` at the repository's root, importable through pytest's ``pythonpath``) and the served-stacks kit
(:mod:`atoma_ops.testing.served`), and share the session's Prefect test harness."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session", autouse=True)
def _prefect(prefect_api):
    yield
