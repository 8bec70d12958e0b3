"""Prefect's ephemeral API, started by the first flow run of a process that has no ``PREFECT_API_URL``.

Prefect gives that server 20 s to answer its health check, then fails the run with "Timed out while attempting to
connect to ephemeral Prefect API server". On a loaded 2-core machine (a first ``make demo`` while the CPU engine
loads, or the test suite on two workers) its database migrations alone can take longer. Every entry point that
runs flows imports this package, so the longer start-up timeout is set here once.
"""

from __future__ import annotations

import os
import sys

#: Prefect's setting (``server.ephemeral.startup_timeout_seconds``), read when the ephemeral server starts
STARTUP_TIMEOUT_ENV = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
#: what the tests' harness uses too (tests/conftest.py)
STARTUP_TIMEOUT_S = 120


def patient_ephemeral_api(seconds: int = STARTUP_TIMEOUT_S) -> None:
    """Give the ephemeral API ``seconds`` to start, unless the user set the timeout themselves.

    Prefect reads its settings once, when it is imported; if it already was, its global settings are read again
    from the environment so the new default applies to the server this process starts (and to its children)."""
    if os.environ.get(STARTUP_TIMEOUT_ENV):
        return
    os.environ[STARTUP_TIMEOUT_ENV] = str(seconds)
    if "prefect.context" in sys.modules:
        sys.modules["prefect.context"].refresh_global_settings_context()
