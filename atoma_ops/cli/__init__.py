"""The ``atoma-ops`` command line: the embedded localnet, test USDC, the ``atoma::db`` entry functions, a serving
node, one stack's lifecycle, and the DuckDB ledger.

One module per command group (``localnet``, ``usdc``, ``db`` + ``db_reads``, ``node``, ``stack``, ``ledger``);
``core`` holds what they share (global options accepted before or after the subcommand, printing), ``errors`` the one
error path and the exit statuses, ``root`` the root command and the console-script entry point ``main``.

``atoma-ops db SUBCOMMAND`` mirrors the Atoma CLI's ``db`` subcommands (atoma-protocol.md §10); each flag is the Move
parameter's name in kebab case. Badges and USDC coins are found among the signer's objects when not given, as the
Atoma CLI does.

Global options: ``--address ALIAS|0x…`` (who signs), ``--home DIR`` (else ``$ATOMA_OPS_HOME``, else
``data/localnet``), ``--json`` (exactly one JSON document on stdout, also on failure: ``{"error": {...}}``),
``--debug`` (a traceback with the error line).

Start-up is kept fast: the wallet and the chain (which pull in pysui) are imported only when a command runs, so
``--help`` costs typer and rich alone; nothing here imports Prefect.
"""

from .errors import EXIT_STATUSES, CliInputError
from .root import app, main

__all__ = ["app", "main", "CliInputError", "EXIT_STATUSES"]
