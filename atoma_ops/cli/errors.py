"""The CLI's one error path: every exception a command meets becomes one named error line (or one JSON document
under ``--json``) and a documented exit status; a traceback only under ``--debug``.

Exit statuses (also in README.md):

- 0: success;
- 1: the command was refused or failed for a named reason: bad input, a Move abort or a rejected transaction, a
  missing, locked, damaged or unreadable file, a full disk, an engine or network failure, ledger drift
  (``ledger reconcile``); nothing was changed unless the message says what was;
- 2: a usage error (an unknown flag, a missing required flag, a value of the wrong type);
- 3: an internal error, a bug in atoma-ops: still one named line (``InternalError``), ``--debug`` prints the
  traceback;
- 130: interrupted (Ctrl-C).

Classes are recognised through ``sys.modules`` so that this module imports neither the chain nor the serving stack:
an error of a module that was never imported cannot have been raised.
"""

from __future__ import annotations

import sqlite3
import sys
import traceback
from typing import Optional

from ..core.jsonable import to_jsonable

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERNAL = 3
EXIT_INTERRUPTED = 130
EXIT_STATUSES = (EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERNAL, EXIT_INTERRUPTED)


class CliInputError(Exception):
    """Bad input caught by the CLI itself, before anything is loaded or changed (exit 1, kind InvalidArgument)."""

    kind = "InvalidArgument"

    def __init__(self, message: str, kind: Optional[str] = None):
        super().__init__(message)
        if kind is not None:
            self.kind = kind


def _instance(exc: BaseException, module: str, name: str) -> bool:
    mod = sys.modules.get(module)
    cls = getattr(mod, name, None) if mod is not None else None
    return isinstance(cls, type) and isinstance(exc, cls)


def _plain(exc: BaseException, kind: Optional[str] = None) -> tuple[dict, str]:
    kind = kind or getattr(exc, "kind", None) or type(exc).__name__
    message = str(exc) or type(exc).__name__
    return {"kind": kind, "message": message}, f"{kind}: {message}"


def _raised_by_us(exc: BaseException) -> bool:
    """The innermost frame of ``exc``'s traceback is atoma-ops code (a ``raise ValueError(...)`` of ours)."""
    tb = exc.__traceback__
    last = None
    while tb is not None:
        last = tb
        tb = tb.tb_next
    return last is not None and "atoma_ops" in last.tb_frame.f_code.co_filename


def classify(exc: BaseException) -> tuple[int, dict, str]:
    """(exit status, JSON error object, human line) for any exception a command can raise."""
    if _instance(exc, "atoma_ops.chain.errors", "MoveAbort"):
        text = f"transaction aborted: {exc.name} (code {exc.code}) in {exc.module}"  # type: ignore[attr-defined]
        if exc.function and exc.module == "db":  # type: ignore[attr-defined]
            text += f"::{exc.function}"  # type: ignore[attr-defined]
        if exc.module == "dynamic_field" and exc.code == 1:  # type: ignore[attr-defined]
            text += " (a table entry does not exist: no such stack, ticket, task or node)"
        return EXIT_FAILED, exc.to_json(), text  # type: ignore[attr-defined]
    if _instance(exc, "atoma_ops.chain.errors", "ChainError"):
        return EXIT_FAILED, exc.to_json(), f"{exc.kind}: {exc}"  # type: ignore[attr-defined]
    if isinstance(exc, CliInputError):
        return (EXIT_FAILED, *_plain(exc))
    if _instance(exc, "atoma_ops.serving.metering", "ServingError"):
        return EXIT_FAILED, {"kind": exc.kind, **exc.to_json()}, f"{exc.kind}: {exc}"  # type: ignore[attr-defined]
    for module, name in (
        ("atoma_ops.wallet", "WalletError"),  # wallet messages never contain key material (wallet.py guarantees it)
        ("atoma_ops.serving.engines.base", "EngineError"),
        ("atoma_ops.serving.history", "HistoryError"),
        ("atoma_ops.serving.workload", "WorkloadError"),
        ("atoma_ops.ledger.store", "LedgerError"),
        ("atoma_ops.client.node_data", "NodeDataError"),
    ):
        if _instance(exc, module, name):
            return (EXIT_FAILED, *_plain(exc))
    if isinstance(exc, ValueError) and type(exc).__module__.startswith("atoma_ops"):
        return (EXIT_FAILED, *_plain(exc, type(exc).__name__))
    if type(exc) is ValueError and _raised_by_us(exc):
        return (EXIT_FAILED, *_plain(exc, "ValueError"))
    if _instance(exc, "duckdb", "Error") or _instance(exc, "httpx", "HTTPError"):
        return (EXIT_FAILED, *_plain(exc, type(exc).__name__))
    if isinstance(exc, (OSError, sqlite3.Error)):
        return (EXIT_FAILED, *_plain(exc, type(exc).__name__))
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED, {"kind": "Interrupted", "message": "interrupted"}, "Interrupted"
    message = f"{type(exc).__name__}: {exc}"
    doc = {"kind": "InternalError", "message": message}
    return EXIT_INTERNAL, doc, f"InternalError (a bug in atoma-ops; --debug prints the traceback): {message}"


def report(exc: BaseException, *, json_mode: bool, debug: bool) -> int:
    """Print ``exc`` as the one error line (stderr) or JSON document (stdout); return the exit status."""
    import json

    status, doc, text = classify(exc)
    if debug:
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    if json_mode:
        sys.stdout.write(json.dumps({"error": to_jsonable(doc)}, indent=2, default=str) + "\n")
        sys.stdout.flush()
    else:
        from rich.console import Console
        from rich.markup import escape

        Console(stderr=True, soft_wrap=True, highlight=False).print(f"[bold red]Error:[/] {escape(text)}")
    return status
