"""Shared fixtures: a fresh localnet home in ``tmp_path`` (init is ~15 ms: five keys and one SQLite file)."""

from __future__ import annotations

from collections import deque

import pytest

from atoma_ops.home import LocalnetHome


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
