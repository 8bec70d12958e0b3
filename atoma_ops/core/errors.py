"""The retry taxonomy: every error is *retryable* (try again as it is: a busy file, a dropped connection before
anything was submitted, requests still in flight), *in doubt* (submitted, outcome unknown: retrying resolves it by
digest) or *terminal* (refused: retrying cannot help).

An error class says which with its ``error_class`` attribute; :func:`classify` reads it, and falls back on what the
standard library and the network clients raise. So the journal and the Prefect tasks' retry condition decide
without importing the serving or ledger layers whose errors they meet.
"""

from __future__ import annotations

import asyncio
import sqlite3
from enum import Enum

__all__ = ["ErrorClass", "classify", "is_retryable"]


class ErrorClass(str, Enum):
    RETRYABLE = "retryable"
    IN_DOUBT = "in_doubt"
    TERMINAL = "terminal"


#: modules whose exceptions are transport failures (a connection dropped, a timeout): worth another try
_TRANSPORT_MODULES = ("httpx", "httpcore", "grpclib", "aiohttp")


def classify(exc: BaseException) -> ErrorClass:
    """Which class ``exc`` is in: its own ``error_class`` if it declares one, else by what it is."""
    declared = getattr(exc, "error_class", None)
    if declared is not None:
        return ErrorClass(declared)
    if isinstance(exc, (TimeoutError, ConnectionError, asyncio.TimeoutError)):
        return ErrorClass.RETRYABLE
    if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc).lower():
        return ErrorClass.RETRYABLE
    if type(exc).__module__.startswith(_TRANSPORT_MODULES):
        return ErrorClass.RETRYABLE
    if isinstance(exc, OSError) and not isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError)):
        return ErrorClass.RETRYABLE
    return ErrorClass.TERMINAL


def is_retryable(exc: BaseException) -> bool:
    """True unless ``exc`` is terminal (an in-doubt write is retried: the retry resolves it by digest)."""
    return classify(exc) is not ErrorClass.TERMINAL
