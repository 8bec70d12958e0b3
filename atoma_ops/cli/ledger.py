"""``atoma-ops ledger …``: the DuckDB ledger (a typer group; also runs on its own, as the ledger tests do).

    atoma-ops ledger [--ledger FILE] [--lock-timeout S] COMMAND   (the global options before or after COMMAND)
      sync [--node-url URL …]       index the chain's new events (one DuckDB transaction per batch), then the
                                    nodes' usage (the node stores under the home, or node servers over HTTP)
      earnings [--by node|task|epoch|epoch_node]
      stacks                        stack utilisation: units bought, served, claimed
      tickets [--all]               open tickets: claimable from / attestation window
      flow                          USDC paid in / paid out / left in the fee treasury, attester credits
      reconcile [--no-sync]         mirror vs chain, drift row by row; exit 1 when there is drift
      export --parquet DIR [--duckdb FILE]
      plot --out FILE.png           earnings per epoch and node

The ledger file defaults to ``<localnet home>/ledger.duckdb``. ``--home``/``--json`` are the root's global options
(the group also declares them, for when it runs on its own). Exit status: 0 success, 1 drift (reconcile) or an error,
2 usage error. Amounts are USDC base units (6 decimals).
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import typer

from ..core.jsonable import to_jsonable
from .core import CONTEXT, CliGroup, not_empty_place, remember
from .session import open_chain

app = typer.Typer(
    name="ledger",
    cls=CliGroup,
    help="The DuckDB ledger: index chain events, earnings, stacks, tickets, reconciliation, export, plots.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    context_settings=CONTEXT,
)


@dataclass
class Opts:
    home: Optional[str] = None
    ledger: Optional[str] = None
    json: bool = False
    lock_timeout: float = 30.0

    def home_path(self) -> Path:
        from ..home import resolve_home

        return resolve_home(self.home)

    def ledger_obj(self):
        from ..ledger.api import Ledger, default_path

        path = Path(self.ledger) if self.ledger else default_path(self.home)
        return Ledger(path, lock_timeout_s=self.lock_timeout)

    state: Any = None  # the root's options (the network to open)


@app.callback()
def _options(
    ctx: typer.Context,
    home: Optional[str] = typer.Option(None, "--home", metavar="DIR", help="Localnet home (default: $ATOMA_OPS_HOME, else data/localnet)."),
    ledger: Optional[str] = typer.Option(None, "--ledger", metavar="FILE", help="Ledger file (default: <home>/ledger.duckdb)."),
    json_output: bool = typer.Option(False, "--json", help="Print exactly one JSON document on stdout."),
    lock_timeout: float = typer.Option(30.0, "--lock-timeout", metavar="S", help="Wait this long for another process's lock."),
) -> None:
    for param in ctx.command.params:
        if param.name in ("home", "ledger"):
            not_empty_place(param, home if param.name == "home" else ledger)
    values = {"home": home, "ledger": ledger, "json_output": json_output, "lock_timeout": lock_timeout}
    given = {}
    for name, value in values.items():
        source = ctx.get_parameter_source(name)
        if source is not None and source.name != "DEFAULT":
            given["json" if name == "json_output" else name] = value
    remember(ctx, **given)


def _opts(ctx: typer.Context) -> Opts:
    """The options as given anywhere on the command line (root, this group, or after the command)."""
    root = ctx.find_root().obj
    return Opts(
        home=getattr(root, "home", None),
        ledger=getattr(root, "ledger", None),
        json=bool(getattr(root, "json", False)),
        lock_timeout=getattr(root, "lock_timeout", 30.0),
        state=root,
    )


# ------------------------------------------------------------------------------------------------ output


def _records(df) -> list[dict]:
    return [{k: to_jsonable(v) for k, v in row.items()} for row in df.to_dict(orient="records")]


def _short(v: Any) -> Any:
    v = to_jsonable(v)
    if isinstance(v, str) and v.startswith("0x") and len(v) > 18:
        return v[:8] + "…" + v[-6:]
    if isinstance(v, list):
        return "[" + ", ".join(str(_short(x)) for x in v) + "]"
    return "" if v is None else v


_NUMBER = re.compile(r"^[-+]?\d[\d.,_]*(e[-+]?\d+)?$")
#: a text column is not folded narrower than this (a number column never is: it keeps its widest value)
_MIN_TEXT_WIDTH = 6


def _header_lines(name: str, width: int) -> str:
    """``attester_credits`` in lines of at most ``width`` (wider only for one long word), broken after an ``_``:
    a header may wrap, its column's numbers may not."""
    parts = [p + "_" for p in name.split("_")]
    parts[-1] = parts[-1][:-1]
    lines = [""]
    for part in parts:
        if lines[-1] and len(lines[-1]) + len(part) > width:
            lines.append("")
        lines[-1] += part
    return "\n".join(lines)


def _table(df, title: str | None = None, console=None) -> None:
    """A rich table in which no number is ever broken across lines: number columns never wrap and keep their
    widest value; their headers wrap at ``_``; text columns fold. When even that does not fit the terminal, each
    row is printed as ``column  value`` lines instead (like psql's expanded display)."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console(soft_wrap=True, highlight=False)
    if len(df) == 0:
        console.print(f"{title + ': ' if title else ''}(none)")
        return
    columns = [str(c) for c in df.columns]
    rows = [[str(_short(v)) for v in row] for row in df.itertuples(index=False)]
    numeric = [all(not r[i] or _NUMBER.match(r[i]) for r in rows) for i in range(len(columns))]
    longest = [max(len(r[i]) for r in rows) for i in range(len(columns))]
    widths = [
        max(w, _header_width(name)) if num else max(1, min(w, _MIN_TEXT_WIDTH))
        for name, w, num in zip(columns, longest, numeric)
    ]
    if 1 + sum(3 + w for w in widths) > console.width:  # each column: its width, two spaces of padding, a border
        _records_view(console, columns, rows, title)
        return
    table = Table(title=title, show_lines=False)
    for name, width, num in zip(columns, widths, numeric):
        if num:
            table.add_column(_header_lines(name, width), no_wrap=True, min_width=width, justify="right")
        else:
            table.add_column(name, overflow="fold", min_width=width)
    for row in rows:
        table.add_row(*row)
    console.print(table)


def _header_width(name: str) -> int:
    """The narrowest a header broken after each ``_`` can be."""
    parts = name.split("_")
    return max([len(p) + 1 for p in parts[:-1]] + [len(parts[-1])])


def _records_view(console, columns: list[str], rows: list[list[str]], title: str | None) -> None:
    from rich.markup import escape

    if title:
        console.print(f"[bold]{escape(title)}[/]")
    pad = max(len(c) for c in columns)
    for n, row in enumerate(rows, 1):
        console.print(f"-[ row {n} ]" + "-" * max(0, min(console.width, 40) - 12 - len(str(n))))
        for name, value in zip(columns, row):
            console.print(f"{escape(name).ljust(pad)}  {escape(value)}", overflow="fold")


def _emit(opts: Opts, doc: Any, human: Callable[[], None]) -> None:
    if opts.json:
        sys.stdout.write(json.dumps(to_jsonable(doc), default=str) + "\n")
    else:
        human()


def _run(opts: Opts, fn: Callable[[], Any]) -> Any:
    """Run a command body (errors go up to the CLI's one error path)."""
    return fn()


async def _with_chain(opts: Opts, body):
    chain = await open_chain(opts.state)
    try:
        return await body(chain)
    finally:
        await chain.close()


# ------------------------------------------------------------------------------------------------ commands
@app.command()
def sync(
    ctx: typer.Context,
    batch_events: int = typer.Option(1000, "--batch-events", min=1, max=1_000_000, help="Events per ledger transaction."),
    page_limit: int = typer.Option(50, "--page-limit", min=1, max=1000, help="Events per chain query (Sui answers at most 50)."),
    node_urls: Optional[list[str]] = typer.Option(
        None, "--node-url", metavar="URL",
        help="Import usage from this node server over HTTP (signed with the node's key from the wallet) instead of "
             "the node stores under --home; repeatable.",
    ),
) -> None:
    """Index the chain's events after the cursor into the ledger, then the nodes' served requests."""
    opts = _opts(ctx)

    def body():
        from ..ledger.node_usage import import_node_usage, import_node_usage_http, node_stores, read_store_usage
        from ..ledger.store import check_ledger_file

        from .inputs import http_url

        urls = [http_url("--node-url", u) for u in node_urls or []]
        ledger = opts.ledger_obj()
        check_ledger_file(ledger.path)
        if not urls:
            for store in node_stores(opts.home_path()):  # check, then act: an unreadable store stops the sync first
                read_store_usage(store)

        async def both(chain):
            from ..client.buyer import node_address

            for u in urls:  # a node that is not there (NodeUnreachable, NotANode) stops the sync before it writes
                await node_address(u)
            report = await ledger.sync(chain, batch_events=batch_events, page_limit=page_limit)
            imports = [await import_node_usage_http(ledger, u, wallet=chain.wallet) for u in urls]
            return report, imports

        report, imports = asyncio.run(_with_chain(opts, both))
        usage_rows = sum(i["rows_added"] for i in imports) if urls else import_node_usage(ledger, opts.home_path())
        doc = {"ledger": str(ledger.path), **report.to_json(), "usage_rows_added": usage_rows}
        if urls:
            doc["node_imports"] = imports
        source = f"{len(urls)} node server(s)" if urls else "the node stores"
        _emit(opts, doc, lambda: typer.echo(
            f"synced {report.events_applied} event(s) in {report.batches} batch(es) "
            f"({report.events_skipped} already indexed) and {usage_rows} usage row(s) from {source} into "
            f"{ledger.path}; chain epoch {report.chain_epoch}"
        ))

    _run(opts, body)


@app.command()
def earnings(
    ctx: typer.Context,
    by: str = typer.Option("node", "--by", help="node | task | epoch | epoch_node"),
) -> None:
    """Earnings: node fees paid at claims plus attester credits (USDC base units)."""
    opts = _opts(ctx)

    def body():
        df = opts.ledger_obj().earnings(by=by)
        _emit(opts, {"by": by, "earnings": _records(df)}, lambda: _table(df, f"earnings by {by}"))

    _run(opts, body)


@app.command()
def stacks(ctx: typer.Context) -> None:
    """Stack utilisation: units bought, served (usage), claimed, and status."""
    opts = _opts(ctx)

    def body():
        df = opts.ledger_obj().stacks()
        cols = ["stack_small_id", "task_small_id", "selected_node_id", "owner_address", "units_bought", "requests",
                "units_served", "units_claimed", "claimed_ratio", "status"]
        _emit(opts, {"stacks": _records(df)}, lambda: _table(df[cols], "stacks"))

    _run(opts, body)


@app.command()
def tickets(
    ctx: typer.Context,
    all_: bool = typer.Option(False, "--all", help="Include claimed tickets."),
) -> None:
    """Open settlement tickets: the epoch each becomes claimable and the last epoch attestations are accepted."""
    opts = _opts(ctx)

    def body():
        df = opts.ledger_obj().tickets(include_claimed=all_)
        if all_:
            cols = ["stack_small_id", "selected_node_id", "num_claimed_compute_units", "settled_epoch",
                    "dispute_settled_at_epoch", "requested_attestation_nodes", "already_attested_nodes",
                    "is_in_dispute", "is_claimed"]
        else:
            cols = ["stack_small_id", "selected_node_id", "num_claimed_compute_units", "settled_epoch",
                    "claimable_from_epoch", "attestation_window_last_epoch", "requested_attestation_nodes",
                    "already_attested_nodes", "status"]
        _emit(opts, {"tickets": _records(df)}, lambda: _table(df[cols], "tickets"))

    _run(opts, body)


@app.command()
def flow(ctx: typer.Context) -> None:
    """USDC flow: paid in, paid out, left in the fee treasury (ledger vs chain), attester credits, headroom."""
    opts = _opts(ctx)

    def body():
        ledger = opts.ledger_obj()
        summary = ledger.usdc_flow()
        sc = ledger.sampling_consensus_payouts()

        def human():
            import pandas as pd

            _table(pd.DataFrame([{"figure": k, "value": v} for k, v in summary.items()]), "USDC flow")
            _table(sc, "Sampling Consensus stacks: payouts vs paid (shared treasury)")

        _emit(opts, {"flow": summary, "sampling_consensus_payouts": _records(sc)}, human)

    _run(opts, body)


@app.command()
def reconcile(
    ctx: typer.Context,
    no_sync: bool = typer.Option(False, "--no-sync", help="Compare without indexing new events first."),
) -> None:
    """Compare the mirror with the chain (stacks, tickets, tasks, nodes, balances, fee treasury); exit 1 on drift."""
    opts = _opts(ctx)

    def body():
        ledger = opts.ledger_obj()
        report = asyncio.run(_with_chain(opts, lambda chain: ledger.reconcile(chain, sync_first=not no_sync)))

        def human():
            if report.ok:
                typer.echo(f"no drift ({', '.join(f'{k} {v}' for k, v in report.checked.items())})")
            else:
                _table(report.drift, f"drift: {len(report.drift)} row(s)")

        _emit(opts, report.to_json(), human)
        return report

    report = _run(opts, body)
    if not report.ok:
        raise typer.Exit(1)


@app.command()
def export(
    ctx: typer.Context,
    parquet: Optional[str] = typer.Option(None, "--parquet", metavar="DIR", help="Write every table and view as DIR/<name>.parquet."),
    duckdb_file: Optional[str] = typer.Option(None, "--duckdb", metavar="FILE", help="Write a standalone DuckDB snapshot."),
) -> None:
    """Export a snapshot that analysts can keep open (the live file is held only one unit of work at a time)."""
    opts = _opts(ctx)
    if parquet is None and duckdb_file is None:
        raise typer.BadParameter("give --parquet DIR and/or --duckdb FILE")
    from ..ledger.api import EXPORTED
    from .inputs import output_dir, output_file

    if parquet is not None:
        output_dir("--parquet", str(parquet), [f"{name}.parquet" for name in EXPORTED])
    if duckdb_file is not None:
        output_file("--duckdb", str(duckdb_file))

    def body():
        ledger = opts.ledger_obj()
        doc: dict = {}
        if parquet is not None:
            doc["parquet"] = [str(p) for p in ledger.export_parquet(parquet)]
        if duckdb_file is not None:
            doc["duckdb"] = str(ledger.snapshot(duckdb_file))

        def human():
            if "parquet" in doc:
                typer.echo(f"wrote {len(doc['parquet'])} Parquet file(s) to {parquet}")
            if "duckdb" in doc:
                typer.echo(f"wrote snapshot {doc['duckdb']}")

        _emit(opts, doc, human)

    _run(opts, body)


@app.command()
def plot(
    ctx: typer.Context,
    out: str = typer.Option(..., "--out", metavar="FILE.png", help="Where to write the chart."),
) -> None:
    """Earnings per epoch and node as a stacked bar chart (needs matplotlib)."""
    opts = _opts(ctx)

    from .inputs import output_file

    output_file("--out", str(out))

    def body():
        path = opts.ledger_obj().plot_earnings(out)
        _emit(opts, {"plot": str(path)}, lambda: typer.echo(f"wrote {path}"))

    _run(opts, body)
