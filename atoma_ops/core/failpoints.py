"""Failpoints: ``$ATOMA_OPS_FAILPOINTS`` kills the process (SIGKILL, no cleanup, like a power cut) at a named step
boundary, so tests and the reliability harness can prove that a re-run converges.

Names are ``area:step[:detail]``: ``journal:after-write`` (journaled, not submitted), ``journal:after-submit``
(executed, outcome not recorded), ``serve:after-record``, ``faucet:after-mint`` …
"""

from __future__ import annotations

import logging
import os
import signal

__all__ = ["FAILPOINTS_ENV", "FAILPOINT_TRACE_ENV", "failpoint"]

log = logging.getLogger("atoma_ops.failpoints")

FAILPOINTS_ENV = "ATOMA_OPS_FAILPOINTS"
FAILPOINT_TRACE_ENV = "ATOMA_OPS_FAILPOINT_TRACE"

_hits: dict[str, int] = {}


def failpoint(name: str) -> None:
    """Die here when ``$ATOMA_OPS_FAILPOINTS`` arms ``name``.

    The variable is a comma-separated list of ``point[@n]``: ``point`` arms ``name`` itself and every name below it
    (``journal:after-write`` arms ``journal:after-write:claim_funds``), ``@n`` its n-th hit in this process (default
    the first). With ``$ATOMA_OPS_FAILPOINT_TRACE`` set to a file, every hit is appended to it, one name a line: the
    reliability harness takes its list of crash points from a traced run.
    """
    trace = os.environ.get(FAILPOINT_TRACE_ENV)
    if trace:
        with open(trace, "a") as f:
            f.write(name + "\n")
    armed = os.environ.get(FAILPOINTS_ENV)
    if not armed:
        return
    for spec in (p.strip() for p in armed.split(",")):
        point, _, nth = spec.partition("@")
        if name != point and not name.startswith(point + ":"):
            continue
        _hits[spec] = hits = _hits.get(spec, 0) + 1
        if hits == (int(nth) if nth else 1):
            log.warning("failpoint %s: killing process %d", name, os.getpid())
            os.kill(os.getpid(), signal.SIGKILL)
