"""``net``: the synchronous test facade (tests/chain/chainkit.py) over a fresh localnet with scripted randomness."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from chainkit import Net  # noqa: E402


@pytest.fixture
def net(chain, draws):
    n = Net(chain, draws)
    yield n
    n.close()
