"""Between try-settle and claim: waiting for the dispute window (on a localnet without wall-clock epochs, moving
time on instead).
"""

from __future__ import annotations

import asyncio
import time

from ..chain.port import Chain
from .common import StageError


async def wait_for_epoch(chain: Chain, epoch: int, *, poll_s: float = 1.0, timeout_s: float = 600.0, advance_localnet: bool = False) -> int:
    """Wait until the chain's epoch reaches ``epoch``. On a localnet without wall-clock epochs nothing moves time
    but us: with ``advance_localnet`` the epoch is advanced instead of waited for."""
    deadline = time.monotonic() + timeout_s
    while True:
        now = await chain.current_epoch()
        if now >= epoch:
            return now
        if advance_localnet and hasattr(chain, "advance_epoch"):
            await chain.advance_epoch(epoch - now)  # type: ignore[attr-defined]
            continue
        if time.monotonic() >= deadline:
            raise StageError(f"epoch {epoch} not reached after {timeout_s:.0f} s (the chain is at {now})")
        await asyncio.sleep(poll_s)
