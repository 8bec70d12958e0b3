"""Prefect's client retries an API call its server answered 503 after 2, 4, 8, 16, 32 s (jittered).

On the test harness's Prefect server (SQLite) a write that meets the task-run recorder's (the server reads then
writes in a deferred transaction) fails with "database is locked", and the server answers 503. The retry a moment
later succeeds, but the client first sleeps 2 s. The signer slot, every chain-writing task's, was the usual one; it
now waits for the recorder first (``tasks.signer``), and this covers the rest. ``quick_first_retries`` makes the first two waits 0.1 s and
0.5 s; later ones are unchanged, so a server that stays unavailable still gets the client's whole patience. Every
503 is still retried (nothing here answers for the server), only sooner.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import pytest

#: the client's backoff (``2 ** try``, before jitter) -> what the tests wait instead
FIRST_RETRIES_S = {2: 0.1, 4: 0.5}


@contextmanager
def quick_first_retries() -> Iterator[None]:
    from prefect.client import base

    jittered = base.clamped_poisson_interval  # used by the client only for its own backoff (no Retry-After)

    def interval(average_interval: float, clamping_factor: float = 0.3) -> float:
        if average_interval in FIRST_RETRIES_S:
            return FIRST_RETRIES_S[average_interval]
        return jittered(average_interval, clamping_factor)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(base, "clamped_poisson_interval", interval)
        yield
