"""Driving a coroutine that never suspends (``LocalnetChain.prepare``) from synchronous code, without an event loop:
the tests and benchmarks that build transactions in a tight loop or in a subprocess script."""

from __future__ import annotations

from typing import Any, Coroutine

__all__ = ["run_sync"]


def run_sync(coro: Coroutine[Any, Any, Any]) -> Any:
    """The coroutine's result; RuntimeError (and the coroutine closed) if it suspends."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    coro.close()
    raise RuntimeError("coroutine suspended; it cannot be driven synchronously")
