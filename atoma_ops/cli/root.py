"""The root ``atoma-ops`` command: global options, the command groups, and the console-script entry point."""

from __future__ import annotations

import functools
import sys
from typing import Any, List, Optional

import typer

from . import errors
from .core import CONTEXT, CliGroup, State, emit_json, not_empty_place
from .db import db_app
from . import db_reads  # noqa: F401  (registers the reads on db_app)
from .ledger import app as ledger_app
from .localnet import localnet_app
from .node import node_app
from .stack import stack_app
from .usdc import usdc_app

EPILOG = (
    "Global options go before or after the subcommand. Exit status: 0 success; 1 refused or failed (bad input, "
    "abort, file, disk, engine, drift); 2 usage error; 3 internal error (a bug; --debug shows the traceback); "
    "130 interrupted."
)

app = typer.Typer(
    name="atoma-ops",
    cls=CliGroup,
    help="Tools for Atoma Network node operators: an embedded localnet of atoma::db, test USDC, and the db entry functions.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,  # locals could hold a wallet; never print them
    epilog=EPILOG,
    context_settings=CONTEXT,
)
app.add_typer(localnet_app, name="localnet")
app.add_typer(usdc_app, name="usdc")
app.add_typer(db_app, name="db")
app.add_typer(node_app, name="node")
app.add_typer(stack_app, name="stack")
# The ledger group imports duckdb and pandas lazily inside its commands; mounting it costs little.
app.add_typer(ledger_app, name="ledger", help="DuckDB ledger: sync, earnings, stacks, tickets, reconcile, export, plot.")


@app.command(
    "prefect",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []},
    help="Prefect automations that notify the team: `atoma-ops prefect automations install --webhook-url URL`.",
)
def _prefect(ctx: typer.Context) -> None:
    # Prefect (and the flows) load only when this command runs; flows.alerts holds the group and its logic.
    from flows.alerts import main as prefect_main

    prefect_main(list(ctx.args))


@app.callback()
def _root(
    ctx: typer.Context,
    address: Optional[str] = typer.Option(
        None, "--address", metavar="ALIAS|0x…", help="Who signs (default: the wallet's active address)."
    ),
    home: Optional[str] = typer.Option(
        None, "--home", metavar="DIR", help="Localnet home (default: $ATOMA_OPS_HOME, else data/localnet)."
    ),
    json_output: bool = typer.Option(False, "--json", help="Print exactly one JSON document on stdout, also on failure."),
    debug: bool = typer.Option(False, "--debug", help="On an error, also print the traceback (stderr)."),
    network: str = typer.Option(
        "localnet", "--network", metavar="localnet|testnet|custom",
        help="The embedded localnet of --home, or Sui: testnet (the published ids) or custom (the ids below).",
    ),
    client_yaml: Optional[str] = typer.Option(
        None, "--client-yaml", metavar="FILE", help="Sui: the wallet's client.yaml (default: <home>/client.yaml)."
    ),
    sui_endpoint: Optional[str] = typer.Option(None, "--sui-endpoint", metavar="URL", help="Sui: the full node's gRPC URL."),
    package_id: Optional[str] = typer.Option(None, "--package-id", metavar="0x…", help="Sui: the Atoma package id."),
    db_id: Optional[str] = typer.Option(None, "--db-id", metavar="0x…", help="Sui: the AtomaDb object id."),
    usdc_coin_type: Optional[str] = typer.Option(None, "--usdc-coin-type", metavar="0x…::usdc::USDC", help="Sui: USDC's type."),
    journal_url: Optional[str] = typer.Option(
        None, "--journal-url", metavar="postgresql://…", envvar="ATOMA_OPS_JOURNAL_URL", show_envvar=False,
        help="The intent journal on PostgreSQL, shared by several hosts (default: $ATOMA_OPS_JOURNAL_URL, else the ledger).",
    ),
) -> None:
    for name, value in (("home", home), ("client_yaml", client_yaml)):
        not_empty_place(next(p for p in ctx.command.params if p.name == name), value)
    st = ctx.obj if isinstance(ctx.obj, State) else State()
    st.address, st.home = address or st.address, home or st.home
    st.json, st.debug = json_output or st.json, debug or st.debug
    source = ctx.get_parameter_source("network")
    if source is not None and source.name != "DEFAULT":
        st.network = network
    st.client_yaml = client_yaml or st.client_yaml
    st.sui_endpoint, st.package_id, st.db_id = sui_endpoint, package_id, db_id
    st.usdc_coin_type = usdc_coin_type
    st.journal_url = journal_url or st.journal_url
    ctx.obj = st


@functools.lru_cache(maxsize=1)
def _command() -> Any:
    """The click command tree, built once per process (typer builds it on every ``app()`` call: tenths of a second
    that a process running many commands, the generative test, would pay each time)."""
    return typer.main.get_command(app)


def _json_requested(args: list[str]) -> bool:
    return "--json" in (args[: args.index("--")] if "--" in args else args)


def main(argv: Optional[List[str]] = None) -> int:
    """Console-script entry point: returns the exit status (errors.py lists them). Usage errors exit 2, with a JSON
    error document too when --json is given anywhere on the command line."""
    # typer 0.29 vendors click; take its exception classes from an exported one so this works either way.
    classes = {c.__name__: c for c in typer.BadParameter.__mro__}
    ClickException, UsageError = classes["ClickException"], classes["UsageError"]

    args = list(sys.argv[1:] if argv is None else argv)
    try:
        rv = _command().main(args=args, prog_name="atoma-ops", standalone_mode=False)
    except ClickException as exc:
        is_help = type(exc).__name__ == "NoArgsIsHelpError"  # typer already printed the help
        if isinstance(exc, UsageError) and _json_requested(args) and not is_help:
            emit_json({"error": {"kind": "UsageError", "message": exc.format_message()}})
        try:
            from typer import rich_utils

            rich_utils.rich_format_error(exc)
        except Exception:  # pragma: no cover - fall back to click's plain message
            exc.show()
        return exc.exit_code
    except typer.Exit as exc:
        return exc.exit_code
    except (typer.Abort, KeyboardInterrupt):
        typer.echo("Aborted!", err=True)
        return errors.EXIT_INTERRUPTED
    return rv if isinstance(rv, int) else 0
