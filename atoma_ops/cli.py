"""The ``atoma-ops`` command line: the embedded localnet, test USDC and the ``atoma::db`` entry functions.

``atoma-ops db SUBCOMMAND`` mirrors the Atoma CLI's ``db`` subcommands (atoma-protocol.md §10); each flag is the Move
parameter's name in kebab case. Badges and USDC coins are found among the signer's objects when not given, as the
Atoma CLI does.

Global options (before the subcommand):

- ``--address ALIAS|0x…``: who signs (default: the wallet's active address, ``admin`` after ``localnet init``);
- ``--home DIR``: the localnet home (else ``$ATOMA_OPS_HOME``, else ``data/localnet``);
- ``--json``: print exactly one JSON document on stdout, also on failure (``{"error": {...}}``).

Exit status: 0 on success; 1 when the chain refuses the call (a Move abort, an arithmetic error, a rejected
transaction) or the input is bad (an unknown alias, a negative amount, non-hex bytes, a missing object, no
localnet); 2 on a usage error (an unknown flag, a missing required flag).

Start-up is kept fast: the wallet and the chain (which pull in pysui) are imported only when a command runs, so
``--help`` costs typer and rich alone; nothing here imports Prefect.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Awaitable, Callable, List, Optional

import typer

from .protocol import abi

if TYPE_CHECKING:  # pragma: no cover
    from rich.console import Console

    from .chain.localnet.adapter import LocalnetChain
    from .chain.types import ChainEvent, TxResult

app = typer.Typer(
    name="atoma-ops",
    help="Tools for Atoma Network node operators: an embedded localnet of atoma::db, test USDC, and the db entry functions.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,  # locals could hold a wallet; never print them
    epilog="Global options go before the subcommand. Exit status: 0 success, 1 abort or bad input, 2 usage error.",
    context_settings={"help_option_names": ["-h", "--help"]},
)
localnet_app = typer.Typer(
    help="Create and drive the embedded localnet (epochs, randomness, status).",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)
usdc_app = typer.Typer(
    help="Test USDC (6 decimals): mint from the localnet faucet, balances, coins.",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)
db_app = typer.Typer(
    help="The atoma::db entry functions and reads (flags = Move parameter names in kebab case).",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(localnet_app, name="localnet")
app.add_typer(usdc_app, name="usdc")
app.add_typer(db_app, name="db")


# --------------------------------------------------------------------------------------------------- plumbing
@dataclass
class State:
    address: Optional[str] = None
    home: Optional[str] = None
    json: bool = False


@app.callback()
def _root(
    ctx: typer.Context,
    address: Optional[str] = typer.Option(
        None, "--address", metavar="ALIAS|0x…", help="Who signs (default: the wallet's active address)."
    ),
    home: Optional[str] = typer.Option(
        None, "--home", metavar="DIR", help="Localnet home (default: $ATOMA_OPS_HOME, else data/localnet)."
    ),
    json_output: bool = typer.Option(False, "--json", help="Print exactly one JSON document on stdout."),
) -> None:
    ctx.obj = State(address=address, home=home, json=json_output)


def _state(ctx: typer.Context) -> State:
    obj = ctx.find_root().obj
    return obj if isinstance(obj, State) else State()


class CliInputError(Exception):
    """Bad input caught by the CLI itself, before anything reaches the chain (exit 1, kind InvalidArgument)."""

    kind = "InvalidArgument"


class Session:
    """One opened localnet home for the duration of a command."""

    def __init__(self, chain: "LocalnetChain", state: State):
        self.chain = chain
        self.wallet = chain.wallet
        self.state = state

    @property
    def sender(self) -> str:
        """The acting address: ``--address`` (alias or 0x…), else the wallet's active address."""
        return self.wallet.resolve(self.state.address)

    def resolve_any(self, alias_or_address: Optional[str]) -> str:
        """An alias or any 0x address (a recipient need not be in the wallet); None -> the acting address."""
        return self.sender if alias_or_address is None else self.wallet.resolve_any(alias_or_address)

    def label(self, address: Optional[str]) -> str:
        if not address or not str(address).startswith("0x"):
            return str(address)
        alias = self.wallet.alias_of(address)
        return f"{alias} ({address})" if alias else address

    def short(self, address: Optional[str]) -> str:
        """The alias of a wallet address, else the address itself."""
        if not address or not str(address).startswith("0x"):
            return str(address)
        return self.wallet.alias_of(address) or address


Render = Callable[["Console"], None]


def _console(stderr: bool = False) -> "Console":
    from rich.console import Console

    return Console(stderr=stderr, soft_wrap=True, highlight=False)


def _esc(value: Any) -> str:
    from rich.markup import escape

    return escape(str(value))


def _emit_json(doc: Any) -> None:
    typer.echo(json.dumps(doc, indent=2))


def _error_doc(exc: BaseException) -> Optional[tuple[dict, str]]:
    """(JSON error object, human message) for an expected error; None for a bug (let it raise)."""
    import sqlite3

    from .chain.errors import ChainError, MoveAbort

    if isinstance(exc, MoveAbort):
        text = f"transaction aborted: {exc.name} (code {exc.code}) in {exc.module}"
        if exc.function and exc.module == "db":
            text += f"::{exc.function}"
        if exc.module == "dynamic_field" and exc.code == 1:
            text += " (a table entry does not exist: no such stack, ticket, task or node)"
        return exc.to_json(), text
    if isinstance(exc, ChainError):
        return exc.to_json(), f"{exc.kind}: {exc}"
    if isinstance(exc, CliInputError):
        return {"kind": exc.kind, "message": str(exc)}, f"{exc.kind}: {exc}"
    wallet = sys.modules.get("atoma_ops.wallet")
    if wallet is not None and isinstance(exc, wallet.WalletError):
        # Wallet messages never contain key material (wallet.py guarantees it).
        return {"kind": type(exc).__name__, "message": str(exc)}, f"{type(exc).__name__}: {exc}"
    if isinstance(exc, (OSError, sqlite3.Error)):
        return {"kind": type(exc).__name__, "message": str(exc)}, f"{type(exc).__name__}: {exc}"
    return None


def _fail(state: State, error: dict, text: str) -> None:
    if state.json:
        _emit_json({"error": error})
    else:
        _console(stderr=True).print(f"[bold red]Error:[/] {_esc(text)}")
    raise typer.Exit(1)


def _run(ctx: typer.Context, produce: Callable[[State], tuple[Any, Render]]) -> None:
    """Run ``produce`` (returns the JSON document and a human renderer) and print; expected errors exit 1."""
    state = _state(ctx)
    try:
        doc, render = produce(state)
    except typer.Exit:
        raise
    except Exception as exc:
        handled = _error_doc(exc)
        if handled is None:
            raise
        _fail(state, *handled)
        return
    if state.json:
        _emit_json(doc)
    else:
        render(_console())


def _with_chain(state: State, action: Callable[[Session], Awaitable[Any]]) -> tuple[Any, Session]:
    """Open the home, run ``action`` in a fresh event loop, close the chain."""
    import asyncio

    from .home import LocalnetHome, resolve_home

    async def main() -> tuple[Any, Session]:
        chain = LocalnetHome(resolve_home(state.home)).open()
        try:
            session = Session(chain, state)
            return await action(session), session
        finally:
            await chain.close()

    return asyncio.run(main())


def _sid(value: Any) -> Any:
    """A small id from parsed JSON (``{"inner": "3"}``) or a plain value."""
    if isinstance(value, dict) and "inner" in value:
        value = value["inner"]
    try:
        return int(value)
    except (TypeError, ValueError):
        return value


def _signed_usdc(delta: int) -> str:
    from .protocol.money import format_usdc

    return ("+" if delta >= 0 else "") + format_usdc(delta)


def _short_type(type_: str) -> str:
    if "::coin::Coin<" in type_:
        return "Coin<USDC>"
    return type_.rsplit("::", 1)[-1]


def _event_summary(e: "ChainEvent", s: Session) -> str:
    p, n = e.parsed_json, e.name
    if n == "PublishedEvent":
        return f"package published: AtomaDb {p.get('db')}, manager badge {p.get('manager_badge')}"
    if n == "NodeRegisteredEvent":
        return f"node {_sid(p['node_small_id'])} registered (NodeBadge {p['badge_id']})"
    if n == "TaskRegisteredEvent":
        model, minimum = p.get("model_name"), p.get("minimum_reputation_score")
        return (
            f"task {_sid(p['task_small_id'])} created: role {_sid(p['role'])}, model {model if model is not None else 'none'}, "
            f"security level {_sid(p['security_level'])}, minimum reputation {minimum if minimum is not None else 'none'}"
        )
    if n == "TaskDeprecationEvent":
        return f"task {_sid(p['task_small_id'])} deprecated in epoch {p['epoch']}"
    if n == "TaskRemovedEvent":
        return f"task {_sid(p['task_small_id'])} removed in epoch {p['removed_at_epoch']}"
    if n == "NodeSubscribedToTaskEvent":
        return (
            f"node {_sid(p['node_small_id'])} subscribed to task {_sid(p['task_small_id'])} at "
            f"{p['price_per_one_million_compute_units']} per 1M compute units (max {p['max_num_compute_units']} units)"
        )
    if n == "NodeSubscriptionUpdatedEvent":
        return (
            f"node {_sid(p['node_small_id'])} now asks {p['price_per_one_million_compute_units']} per 1M compute units "
            f"on task {_sid(p['task_small_id'])}"
        )
    if n == "NodeUnsubscribedFromTaskEvent":
        return f"node {_sid(p['node_small_id'])} unsubscribed from task {_sid(p['task_small_id'])}"
    if n == "StackCreatedEvent":
        return (
            f"stack {_sid(p['stack_small_id'])} → node {_sid(p['selected_node_id'])} (task {_sid(p['task_small_id'])}, "
            f"{p['num_compute_units']} compute units at {p['price_per_one_million_compute_units']} per 1M, "
            f"owner {s.short(p['owner'])})"
        )
    if n == "StackTrySettleEvent":
        att = [_sid(x) for x in p.get("requested_attestation_nodes", [])]
        return (
            f"stack {_sid(p['stack_small_id'])} settled by node {_sid(p['selected_node_id'])}: "
            f"{p['num_claimed_compute_units']} compute units claimed; attestation nodes {att or 'none'}"
        )
    if n == "NewStackSettlementAttestationEvent":
        return f"stack {_sid(p['stack_small_id'])} attested by node {_sid(p['attestation_node_id'])}"
    if n == "StackSettlementTicketEvent":
        return f"stack {_sid(p['stack_small_id'])}: all attestations in (epoch {p['dispute_settled_at_epoch']})"
    if n == "StackAttestationDisputeEvent":
        return (
            f"stack {_sid(p['stack_small_id'])} disputed by node {_sid(p['attestation_node_id'])} "
            f"(settled by node {_sid(p['original_node_id'])})"
        )
    if n == "StackSettlementTicketClaimedEvent":
        return (
            f"stack {_sid(p['stack_small_id'])} claimed by node {_sid(p['selected_node_id'])}: "
            f"{p['num_claimed_compute_units']} compute units, refund {p['user_refund_amount']} to the owner"
        )
    if n == "ClaimedStackEvent":
        return (
            f"stack {_sid(p['stack_small_id'])} claimed by node {_sid(p['selected_node_id'])} (confidential path): "
            f"{p['num_claimed_compute_units']} compute units, refund {p['user_refund_amount']} to the owner"
        )
    return f"{n} {json.dumps(p, separators=(',', ':'))}"


def _render_tx(tx: "TxResult", title: str, s: Session) -> Render:
    def render(con: "Console") -> None:
        con.print(f"[green]✓[/] [bold]{_esc(title)}[/]  digest {tx.digest}  (epoch {tx.epoch}, sender {_esc(s.short(tx.sender))})")
        for e in tx.events:
            con.print(f"  [cyan]{e.name}[/]: {_esc(_event_summary(e, s))}")
        for c in tx.object_changes:
            if c.change == "created":
                con.print(f"  created {_short_type(c.type)} {c.object_id} → {_esc(s.short(c.owner))}")
            elif c.change == "deleted":
                con.print(f"  deleted {_short_type(c.type)} {c.object_id}")
        for address, delta in tx.balance_changes.items():
            con.print(f"  USDC {_esc(s.short(address))}: {_signed_usdc(delta)} ({delta:+d} base units)")

    return render


def _tx_command(ctx: typer.Context, title: str, call: Callable[[Session], Awaitable["TxResult"]]) -> None:
    def produce(state: State) -> tuple[Any, Render]:
        tx, s = _with_chain(state, call)
        return tx.to_json(), _render_tx(tx, title, s)

    _run(ctx, produce)


def _render_fields(title: str, fields: dict, s: Session) -> Render:
    def render(con: "Console") -> None:
        con.print(f"[bold]{_esc(title)}[/]")
        width = max((len(k) for k in fields), default=0)
        for k, v in fields.items():
            if isinstance(v, bytes):
                v = "0x" + v.hex()
            elif v is None:
                v = "—"
            elif isinstance(v, str) and v.startswith("0x") and len(v) == 66:
                v = s.label(v)
            con.print(f"  {k.ljust(width)}  {_esc(v)}")

    return render


# --------------------------------------------------------------------------------------------------- input parsing
_HEX_RE = re.compile(r"^[0-9a-fA-F]*$")


def _hex(flag: str, text: str) -> bytes:
    """``0x``-prefixed hex -> bytes (the contract checks lengths, not the CLI)."""
    t = text.strip()
    if not t.startswith(("0x", "0X")) or not _HEX_RE.match(t[2:]) or len(t) % 2:
        raise CliInputError(f"{flag}: {text!r} is not 0x-prefixed hex bytes (e.g. 0x{'ab' * 32})")
    return bytes.fromhex(t[2:])


def _ints(flag: str, values: Optional[List[str]]) -> list[int]:
    """Repeated flags and comma lists, in order: ``--x 1 --x 2,3`` -> [1, 2, 3]; empty pieces are dropped."""
    out: list[int] = []
    for value in values or []:
        for piece in value.split(","):
            piece = piece.strip()
            if not piece:
                continue
            try:
                out.append(int(piece))
            except ValueError:
                raise CliInputError(f"{flag}: {piece!r} is not an integer") from None
    return out


def _object_id(flag: str, text: Optional[str]) -> Optional[str]:
    """An object id flag: ``0x`` and 1..64 hex digits (None passes: the object is then found among the signer's)."""
    if text is None:
        return None
    t = text.strip()
    if not t.startswith(("0x", "0X")) or not 0 < len(t) - 2 <= 64 or not _HEX_RE.match(t[2:]):
        raise CliInputError(f"{flag}: {text!r} is not an object id (0x and up to 64 hex digits)")
    return t


def _node_badge(node_badge: Optional[str], node_small_id: Optional[int]) -> dict:
    if node_badge is not None and node_small_id is not None:
        raise CliInputError("--node-badge and --node-small-id both pick the NodeBadge; give one of them")
    return {"node_badge": _object_id("--node-badge", node_badge), "node_small_id": node_small_id}


def _task_badge(task_badge: Optional[str], task_small_id: Optional[int]) -> dict:
    if task_badge is not None and task_small_id is not None:
        raise CliInputError("--task-badge and --task-small-id both pick the TaskBadge; give one of them")
    return {"task_badge": _object_id("--task-badge", task_badge), "task_small_id": task_small_id}


def _kebab(name: str) -> str:
    return name.replace("_", "-")


NODE_BADGE_OPT = typer.Option(None, "--node-badge", metavar="ID", help="NodeBadge object id (default: the signer's only one).")
NODE_SMALL_ID_OPT = typer.Option(None, "--node-small-id", metavar="N", help="Pick the signer's NodeBadge with this node small id.")
MANAGER_BADGE_OPT = typer.Option(None, "--badge", metavar="ID", help="AtomaManagerBadge object id (default: the signer's).")


# --------------------------------------------------------------------------------------------------- localnet
@localnet_app.command("init")
def localnet_init(
    ctx: typer.Context,
    seed: int = typer.Option(0, "--seed", help="Seed of the localnet's random stream (which node a stack gets)."),
    epoch_duration_ms: int = typer.Option(
        0, "--epoch-duration-ms", metavar="MS", help="Advance epochs by wall clock; 0 = only by `localnet advance-epoch`."
    ),
    force: bool = typer.Option(False, "--force", help="Replace an existing localnet, its wallet, ledger and node stores in the home."),
) -> None:
    """Publish a fresh localnet and write a wallet (admin, user, node-1..3) in the home."""

    def produce(state: State) -> tuple[Any, Render]:
        from .home import LocalnetHome, resolve_home

        home = LocalnetHome(resolve_home(state.home).absolute())
        localnet, wallet = home.init(seed=seed, epoch_duration_ms=epoch_duration_ms, force=force)
        try:
            aliases = wallet.aliases()
            badges = localnet.badges(aliases["admin"])
            doc = {
                "home": str(home.path),
                "chain_id": localnet.chain_id,
                "package_id": localnet.package_id,
                "db_id": localnet.db_id,
                "usdc_type": localnet.usdc_type,
                "manager_badge": next((b.object_id for b in badges if b.kind == "AtomaManagerBadge"), None),
                "seed": seed,
                "epoch_duration_ms": epoch_duration_ms,
                "active_address": wallet.active_address,
                "aliases": aliases,
                "client_yaml": str(wallet.client_yaml),
                "keystore": str(wallet.keystore_path),
            }
        finally:
            localnet.close()

        def render(con: "Console") -> None:
            con.print(f"[green]✓[/] localnet initialised in [bold]{_esc(doc['home'])}[/]")
            con.print(f"  package        {doc['package_id']}")
            con.print(f"  AtomaDb        {doc['db_id']}")
            con.print(f"  manager badge  {doc['manager_badge']} (admin)")
            con.print(f"  USDC type      {doc['usdc_type']}")
            epochs = f"every {epoch_duration_ms} ms" if epoch_duration_ms else "manual (`localnet advance-epoch`)"
            con.print(f"  seed {seed}; epochs: {epochs}")
            con.print(f"Addresses (keys stay in {_esc(doc['keystore'])}, mode 0600):")
            width = max(len(a) for a in aliases)
            for alias, address in aliases.items():
                active = "  (active)" if address == doc["active_address"] else ""
                con.print(f"  {alias.ljust(width)}  {address}{active}")

        return doc, render

    _run(ctx, produce)


@localnet_app.command("status")
def localnet_status(ctx: typer.Context) -> None:
    """Epoch and clock, package and AtomaDb ids, treasuries, small-id counters and USDC totals."""

    async def action(s: Session) -> dict:
        net = s.chain.localnet
        cfg = await s.chain.db_config()
        from .chain.types import to_jsonable

        return {
            "home": str(net.path.parent.absolute()),
            "chain_id": net.chain_id,
            "package_id": net.package_id,
            "db_id": net.db_id,
            "usdc_type": net.usdc_type,
            "epoch": await s.chain.current_epoch(),
            "clock": net.clock(),
            "treasuries": {"fee_treasury": cfg.fee_treasury, "communal_treasury": cfg.communal_treasury},
            "counters": {
                "next_node_small_id": cfg.next_node_small_id,
                "next_task_small_id": cfg.next_task_small_id,
                "next_stack_small_id": cfg.next_stack_small_id,
            },
            "usdc": net.total_usdc(),
            "open_stacks": len(net.list_stacks()),
            "open_tickets": len(net.list_tickets()),
            "config": to_jsonable(cfg),
        }

    def produce(state: State) -> tuple[Any, Render]:
        doc, s = _with_chain(state, action)

        def render(con: "Console") -> None:
            from .protocol.money import format_usdc

            clock = doc["clock"]
            con.print(f"[bold]localnet[/] {_esc(doc['home'])}  (chain {doc['chain_id']})")
            auto = f", {clock['epoch_duration_ms']} ms per epoch" if clock["epoch_duration_ms"] else ", advanced by hand"
            con.print(f"  epoch          {doc['epoch']}{auto}")
            con.print(f"  package        {doc['package_id']}")
            con.print(f"  AtomaDb        {doc['db_id']}")
            c = doc["counters"]
            con.print(
                f"  next ids       node {c['next_node_small_id']}, task {c['next_task_small_id']}, stack {c['next_stack_small_id']}"
            )
            con.print(f"  open stacks    {doc['open_stacks']}, settlement tickets {doc['open_tickets']}")
            t = doc["treasuries"]
            con.print(
                f"  treasuries     fee {format_usdc(t['fee_treasury'])} USDC, communal {format_usdc(t['communal_treasury'])} USDC"
            )
            u = doc["usdc"]
            held = u["coins"] + u["fee_treasury"] + u["communal_treasury"] + u["collateral"]
            ok = "[green]conserved[/]" if held == u["minted"] else "[red]NOT conserved[/]"
            con.print(
                f"  USDC           minted {format_usdc(u['minted'])}, in coins {format_usdc(u['coins'])}, "
                f"collateral {format_usdc(u['collateral'])} — {ok}"
            )
            cfg = doc["config"]
            con.print(
                f"  config         registration {'disabled' if cfg['is_registration_disabled'] else 'enabled'}, "
                f"cross-validation {cfg['cross_validation_probability_permille']}‰ × {cfg['cross_validation_extra_nodes_count']} node(s), "
                f"sampling consensus charge {cfg['sampling_consensus_charge_permille']}‰ "
                f"+ {cfg['cross_validation_extra_nodes_charge_permille']}‰"
            )

        return doc, render

    _run(ctx, produce)


@localnet_app.command("advance-epoch")
def localnet_advance_epoch(
    ctx: typer.Context, count: int = typer.Option(1, "--count", metavar="N", help="How many epochs to advance.")
) -> None:
    """Move the localnet to a later epoch (what ~24 h does on Sui)."""

    async def action(s: Session) -> int:
        return await s.chain.advance_epoch(count)

    def produce(state: State) -> tuple[Any, Render]:
        epoch, _ = _with_chain(state, action)
        return {"epoch": epoch}, lambda con: con.print(f"[green]✓[/] epoch is now {epoch}")

    _run(ctx, produce)


@localnet_app.command("seed-rng")
def localnet_seed_rng(
    ctx: typer.Context, seed: int = typer.Option(..., "--seed", metavar="N", help="New seed; the draw counter restarts.")
) -> None:
    """Reseed the localnet's random stream (stands in for sui::random)."""

    async def action(s: Session) -> None:
        await s.chain.seed_rng(seed)

    def produce(state: State) -> tuple[Any, Render]:
        _with_chain(state, action)
        return {"seed": seed}, lambda con: con.print(f"[green]✓[/] random stream reseeded with {seed}")

    _run(ctx, produce)


# --------------------------------------------------------------------------------------------------- usdc
@usdc_app.command("mint")
def usdc_mint(
    ctx: typer.Context,
    amount: int = typer.Option(..., "--amount", metavar="BASE_UNITS", help="USDC base units (1 USDC = 1000000)."),
    to: Optional[str] = typer.Option(None, "--to", metavar="ALIAS|0x…", help="Recipient (default: the acting address)."),
) -> None:
    """Mint test USDC from the localnet's faucet into a new coin."""

    async def action(s: Session) -> tuple["TxResult", str, int]:
        recipient = s.resolve_any(to)
        tx = await s.chain.faucet_mint(recipient, amount)
        return tx, recipient, await s.chain.usdc_balance(recipient)

    def produce(state: State) -> tuple[Any, Render]:
        from .protocol.money import format_usdc

        (tx, recipient, balance), s = _with_chain(state, action)

        def render(con: "Console") -> None:
            con.print(
                f"[green]✓[/] minted {format_usdc(amount)} USDC ({amount} base units) to {_esc(s.label(recipient))}"
            )
            con.print(f"  digest {tx.digest}; balance now {format_usdc(balance)} USDC ({balance} base units)")

        return tx.to_json(), render

    _run(ctx, produce)


@usdc_app.command("balance")
def usdc_balance(
    ctx: typer.Context,
    who: Optional[str] = typer.Argument(None, metavar="[ALIAS|0x…]", help="Whose balance (default: the acting address)."),
) -> None:
    """USDC balance with 6 decimals and in base units."""

    async def action(s: Session) -> tuple[str, int]:
        address = s.resolve_any(who)
        return address, await s.chain.usdc_balance(address)

    def produce(state: State) -> tuple[Any, Render]:
        from .protocol.money import format_usdc

        (address, units), s = _with_chain(state, action)
        doc = {"address": address, "base_units": units, "usdc": format_usdc(units)}
        return doc, lambda con: con.print(f"{_esc(s.label(address))}: {doc['usdc']} USDC ({units} base units)")

    _run(ctx, produce)


@usdc_app.command("coins")
def usdc_coins(
    ctx: typer.Context,
    who: Optional[str] = typer.Argument(None, metavar="[ALIAS|0x…]", help="Whose coins (default: the acting address)."),
) -> None:
    """The USDC coin objects an address owns."""

    async def action(s: Session) -> tuple[str, list]:
        address = s.resolve_any(who)
        return address, await s.chain.usdc_coins(address)

    def produce(state: State) -> tuple[Any, Render]:
        from .chain.types import to_jsonable
        from .protocol.money import format_usdc

        (address, coins), s = _with_chain(state, action)
        total = sum(c.balance for c in coins)
        doc = {"address": address, "coins": to_jsonable(coins), "base_units": total, "usdc": format_usdc(total)}

        def render(con: "Console") -> None:
            con.print(f"{_esc(s.label(address))}: {len(coins)} USDC coin(s), {format_usdc(total)} USDC")
            for c in coins:
                con.print(f"  {c.object_id}  {format_usdc(c.balance)} ({c.balance})  v{c.version}")

        return doc, render

    _run(ctx, produce)


# --------------------------------------------------------------------------------------------------- db: writes
@db_app.command("create-task-entry")
def db_create_task_entry(
    ctx: typer.Context,
    role: int = typer.Option(..., "--role", help="0 chat completion, 1 embedding, 2 vision, 3 image generation, … 7 training."),
    model_name: Optional[str] = typer.Option(None, "--model-name", help="Free-text model name (ASCII)."),
    security_level: Optional[int] = typer.Option(
        None, "--security-level", help="0 none (default), 1 confidential compute, 2 sampling consensus."
    ),
    minimum_reputation_score: Optional[int] = typer.Option(None, "--minimum-reputation-score", help="0..100."),
    is_public: bool = typer.Option(True, "--is-public/--is-private", help="Any node may subscribe (default), or whitelisted ones only."),
    badge: Optional[str] = MANAGER_BADGE_OPT,
) -> None:
    """Create a task (admin: needs the AtomaManagerBadge)."""
    _tx_command(
        ctx,
        "db::create_task_entry",
        lambda s: s.chain.create_task_entry(
            s.sender,
            role=role,
            model_name=model_name,
            security_level=security_level,
            minimum_reputation_score=minimum_reputation_score,
            is_public=is_public,
            badge=_object_id("--badge", badge),
        ),
    )


TASK_BADGE_OPT = typer.Option(None, "--task-badge", metavar="ID", help="TaskBadge object id.")
TASK_SMALL_ID_PICK_OPT = typer.Option(None, "--task-small-id", metavar="N", help="Pick the signer's TaskBadge of this task.")


@db_app.command("deprecate-task")
def db_deprecate_task(
    ctx: typer.Context, task_badge: Optional[str] = TASK_BADGE_OPT, task_small_id: Optional[int] = TASK_SMALL_ID_PICK_OPT
) -> None:
    """Deprecate a task (needs its TaskBadge)."""

    def call(s: Session) -> Awaitable["TxResult"]:
        return s.chain.deprecate_task(s.sender, **_task_badge(task_badge, task_small_id))

    _tx_command(ctx, "db::deprecate_task", call)


@db_app.command("remove-deprecated-task")
def db_remove_deprecated_task(
    ctx: typer.Context, task_badge: Optional[str] = TASK_BADGE_OPT, task_small_id: Optional[int] = TASK_SMALL_ID_PICK_OPT
) -> None:
    """Remove a task deprecated at least one epoch ago (consumes its TaskBadge)."""

    def call(s: Session) -> Awaitable["TxResult"]:
        return s.chain.remove_deprecated_task(s.sender, **_task_badge(task_badge, task_small_id))

    _tx_command(ctx, "db::remove_deprecated_task", call)


@db_app.command("remove-deprecated-task-by-admin")
def db_remove_deprecated_task_by_admin(
    ctx: typer.Context,
    task_small_id: int = typer.Option(..., "--task-small-id", metavar="N"),
    badge: Optional[str] = MANAGER_BADGE_OPT,
) -> None:
    """Remove a task deprecated at least two epochs ago (admin)."""
    _tx_command(
        ctx,
        "db::remove_deprecated_task_by_admin",
        lambda s: s.chain.remove_deprecated_task_by_admin(
            s.sender, task_small_id=task_small_id, badge=_object_id("--badge", badge)
        ),
    )


@db_app.command("whitelist-nodes-for-task")
def db_whitelist_nodes_for_task(
    ctx: typer.Context,
    task_small_id: int = typer.Option(..., "--task-small-id", metavar="N"),
    nodes: List[str] = typer.Option(
        ..., "--nodes-small-ids", "--nodes", metavar="N[,N…]", help="Node small ids; repeat the flag or give a comma list."
    ),
    badge: Optional[str] = MANAGER_BADGE_OPT,
) -> None:
    """Allow nodes to subscribe to a private task (admin)."""

    def call(s: Session) -> Awaitable["TxResult"]:
        return s.chain.whitelist_nodes_for_task(
            s.sender,
            task_small_id=task_small_id,
            nodes=_ints("--nodes-small-ids", nodes),
            badge=_object_id("--badge", badge),
        )

    _tx_command(ctx, "db::whitelist_nodes_for_task", call)


@db_app.command("register-node")
def db_register_node(ctx: typer.Context) -> None:
    """Register the signer as a node (a NodeBadge is sent to it)."""
    _tx_command(ctx, "db::register_node_entry", lambda s: s.chain.register_node_entry(s.sender))


@db_app.command("subscribe-node-to-task")
def db_subscribe_node_to_task(
    ctx: typer.Context,
    task_small_id: int = typer.Option(..., "--task-small-id", metavar="N"),
    price_per_one_million_compute_units: int = typer.Option(
        ..., "--price-per-one-million-compute-units", metavar="BASE_UNITS", help="The node's ask, USDC base units per 1M compute units."
    ),
    node_badge: Optional[str] = NODE_BADGE_OPT,
    node_small_id: Optional[int] = NODE_SMALL_ID_OPT,
) -> None:
    """Subscribe the signer's node to a task at a price."""

    def call(s: Session) -> Awaitable["TxResult"]:
        return s.chain.subscribe_node_to_task(
            s.sender,
            task_small_id=task_small_id,
            price_per_one_million_compute_units=price_per_one_million_compute_units,
            **_node_badge(node_badge, node_small_id),
        )

    _tx_command(ctx, "db::subscribe_node_to_task", call)


@db_app.command("update-node-subscription")
def db_update_node_subscription(
    ctx: typer.Context,
    task_small_id: int = typer.Option(..., "--task-small-id", metavar="N"),
    price_per_one_million_compute_units: int = typer.Option(..., "--price-per-one-million-compute-units", metavar="BASE_UNITS"),
    node_badge: Optional[str] = NODE_BADGE_OPT,
    node_small_id: Optional[int] = NODE_SMALL_ID_OPT,
) -> None:
    """Change the node's price on a task it is subscribed to."""

    def call(s: Session) -> Awaitable["TxResult"]:
        return s.chain.update_node_subscription(
            s.sender,
            task_small_id=task_small_id,
            price_per_one_million_compute_units=price_per_one_million_compute_units,
            **_node_badge(node_badge, node_small_id),
        )

    _tx_command(ctx, "db::update_node_subscription", call)


@db_app.command("unsubscribe-node-from-task")
def db_unsubscribe_node_from_task(
    ctx: typer.Context,
    task_small_id: int = typer.Option(..., "--task-small-id", metavar="N"),
    node_badge: Optional[str] = NODE_BADGE_OPT,
    node_small_id: Optional[int] = NODE_SMALL_ID_OPT,
) -> None:
    """Unsubscribe the node from a task."""

    def call(s: Session) -> Awaitable["TxResult"]:
        return s.chain.unsubscribe_node_from_task(
            s.sender, task_small_id=task_small_id, **_node_badge(node_badge, node_small_id)
        )

    _tx_command(ctx, "db::unsubscribe_node_from_task", call)


@db_app.command("acquire-new-stack-entry")
def db_acquire_new_stack_entry(
    ctx: typer.Context,
    task_small_id: int = typer.Option(..., "--task-small-id", metavar="N"),
    num_compute_units: int = typer.Option(..., "--num-compute-units", metavar="N"),
    price: int = typer.Option(..., "--price", metavar="BASE_UNITS", help="The buyer's bid per 1M compute units (what it pays)."),
    wallet: Optional[str] = typer.Option(
        None, "--wallet", metavar="COIN_ID", help="USDC coin to pay with (default: all the signer's USDC coins, merged)."
    ),
) -> None:
    """Buy a stack of compute units on a task; a subscribed node is drawn at random."""
    _tx_command(
        ctx,
        "db::acquire_new_stack_entry",
        lambda s: s.chain.acquire_new_stack_entry(
            s.sender,
            task_small_id=task_small_id,
            num_compute_units=num_compute_units,
            price=price,
            wallet=_object_id("--wallet", wallet),
        ),
    )


PROOF_HELP = "32 bytes as 0x hex."


@db_app.command("try-settle-stack")
def db_try_settle_stack(
    ctx: typer.Context,
    stack_small_id: int = typer.Option(..., "--stack-small-id", metavar="N"),
    num_claimed_compute_units: int = typer.Option(..., "--num-claimed-compute-units", metavar="N"),
    committed_stack_proof: str = typer.Option(..., "--committed-stack-proof", metavar="0xHEX", help=PROOF_HELP),
    stack_merkle_leaf: str = typer.Option(..., "--stack-merkle-leaf", metavar="0xHEX", help=PROOF_HELP),
    node_badge: Optional[str] = NODE_BADGE_OPT,
    node_small_id: Optional[int] = NODE_SMALL_ID_OPT,
) -> None:
    """Open a settlement ticket for a stack the node served (claimable one epoch later)."""

    def call(s: Session) -> Awaitable["TxResult"]:
        return s.chain.try_settle_stack(
            s.sender,
            stack_small_id=stack_small_id,
            num_claimed_compute_units=num_claimed_compute_units,
            committed_stack_proof=_hex("--committed-stack-proof", committed_stack_proof),
            stack_merkle_leaf=_hex("--stack-merkle-leaf", stack_merkle_leaf),
            **_node_badge(node_badge, node_small_id),
        )

    _tx_command(ctx, "db::try_settle_stack", call)


@db_app.command("submit-stack-settlement-attestation")
def db_submit_stack_settlement_attestation(
    ctx: typer.Context,
    stack_small_id: int = typer.Option(..., "--stack-small-id", metavar="N"),
    committed_stack_proof: str = typer.Option(..., "--committed-stack-proof", metavar="0xHEX", help=PROOF_HELP),
    stack_merkle_leaf: str = typer.Option(..., "--stack-merkle-leaf", metavar="0xHEX", help=PROOF_HELP),
    node_badge: Optional[str] = NODE_BADGE_OPT,
    node_small_id: Optional[int] = NODE_SMALL_ID_OPT,
) -> None:
    """Attest a settlement as a sampled attestation node (Sampling Consensus tasks)."""

    def call(s: Session) -> Awaitable["TxResult"]:
        return s.chain.submit_stack_settlement_attestation(
            s.sender,
            stack_small_id=stack_small_id,
            committed_stack_proof=_hex("--committed-stack-proof", committed_stack_proof),
            stack_merkle_leaf=_hex("--stack-merkle-leaf", stack_merkle_leaf),
            **_node_badge(node_badge, node_small_id),
        )

    _tx_command(ctx, "db::submit_stack_settlement_attestation", call)


@db_app.command("start-attestation-dispute")
def db_start_attestation_dispute(
    ctx: typer.Context,
    stack_small_id: int = typer.Option(..., "--stack-small-id", metavar="N"),
    attestation_commitment: str = typer.Option(..., "--attestation-commitment", metavar="0xHEX"),
    node_badge: Optional[str] = NODE_BADGE_OPT,
    node_small_id: Optional[int] = NODE_SMALL_ID_OPT,
) -> None:
    """Put a settlement ticket in dispute (Sampling Consensus tasks)."""

    def call(s: Session) -> Awaitable["TxResult"]:
        return s.chain.start_attestation_dispute(
            s.sender,
            stack_small_id=stack_small_id,
            attestation_commitment=_hex("--attestation-commitment", attestation_commitment),
            **_node_badge(node_badge, node_small_id),
        )

    _tx_command(ctx, "db::start_attestation_dispute", call)


@db_app.command("claim-funds")
def db_claim_funds(
    ctx: typer.Context,
    settled_ticket_ids: List[str] = typer.Option(
        ..., "--settled-ticket-ids", metavar="N[,N…]", help="Stack small ids of settled tickets; repeat or comma list."
    ),
    node_badge: Optional[str] = NODE_BADGE_OPT,
    node_small_id: Optional[int] = NODE_SMALL_ID_OPT,
) -> None:
    """Claim the fees of settled stacks once their dispute window is over (refunds go to the owners)."""

    def call(s: Session) -> Awaitable["TxResult"]:
        return s.chain.claim_funds(
            s.sender,
            settled_ticket_ids=_ints("--settled-ticket-ids", settled_ticket_ids),
            **_node_badge(node_badge, node_small_id),
        )

    _tx_command(ctx, "db::claim_funds", call)


@db_app.command("claim-funds-for-stacks")
def db_claim_funds_for_stacks(
    ctx: typer.Context,
    stack_small_ids: List[str] = typer.Option(..., "--stack-small-ids", metavar="N[,N…]"),
    num_compute_units_per_stack_to_claim: List[str] = typer.Option(
        ..., "--num-compute-units-per-stack-to-claim", metavar="N[,N…]", help="One per stack, same order."
    ),
    node_badge: Optional[str] = NODE_BADGE_OPT,
    node_small_id: Optional[int] = NODE_SMALL_ID_OPT,
) -> None:
    """Claim stacks directly, without a ticket (Confidential Compute tasks)."""

    def call(s: Session) -> Awaitable["TxResult"]:
        return s.chain.claim_funds_for_stacks(
            s.sender,
            stack_small_ids=_ints("--stack-small-ids", stack_small_ids),
            num_compute_units_per_stack_to_claim=_ints(
                "--num-compute-units-per-stack-to-claim", num_compute_units_per_stack_to_claim
            ),
            **_node_badge(node_badge, node_small_id),
        )

    _tx_command(ctx, "db::claim_funds_for_stacks", call)


def _node_only_command(name: str, function: str, doc: str) -> None:
    def command(
        ctx: typer.Context, node_badge: Optional[str] = NODE_BADGE_OPT, node_small_id: Optional[int] = NODE_SMALL_ID_OPT
    ) -> None:
        def call(s: Session) -> Awaitable["TxResult"]:
            return getattr(s.chain, function)(s.sender, **_node_badge(node_badge, node_small_id))

        _tx_command(ctx, f"db::{function}", call)

    command.__doc__ = doc
    command.__name__ = f"db_{function}"
    db_app.command(name)(command)


_node_only_command("withdraw-fees", "withdraw_fees", "Withdraw the node's available fees (credited as an attester).")
_node_only_command("permanently-disable-node", "permanently_disable_node", "Disable the node for good (it is never sampled again).")
_node_only_command(
    "destroy-disabled-node", "destroy_disabled_node", "Destroy a node disabled at least 4 epochs ago (consumes the NodeBadge)."
)


def _admin_setter_command(setter: str) -> None:
    takes_value = any(p.name == "value" for p in abi.ENTRY_FUNCTIONS[setter])
    title = f"db::{setter}"
    if takes_value:

        def command(
            ctx: typer.Context,
            value: int = typer.Option(..., "--value", metavar="N"),
            badge: Optional[str] = MANAGER_BADGE_OPT,
        ) -> None:
            _tx_command(
                ctx, title, lambda s: s.chain.admin_set(s.sender, setter, value, badge=_object_id("--badge", badge))
            )

    else:

        def command(ctx: typer.Context, badge: Optional[str] = MANAGER_BADGE_OPT) -> None:  # type: ignore[misc]
            _tx_command(ctx, title, lambda s: s.chain.admin_set(s.sender, setter, badge=_object_id("--badge", badge)))

    command.__doc__ = f"Admin setter {setter} (needs the AtomaManagerBadge)."
    command.__name__ = f"db_{setter}"
    db_app.command(_kebab(setter))(command)


for _setter in abi.ADMIN_SETTERS:
    _admin_setter_command(_setter)


# --------------------------------------------------------------------------------------------------- db: reads
def _read_command(ctx: typer.Context, action: Callable[[Session], Awaitable[tuple[Any, Callable[[Session], Render]]]]) -> None:
    def produce(state: State) -> tuple[Any, Render]:
        (doc, make_render), s = _with_chain(state, action)
        return doc, make_render(s)

    _run(ctx, produce)


def _not_found(what: str) -> Exception:
    from .chain.errors import NotFound

    return NotFound(what)


def _get_one(ctx: typer.Context, title: str, missing: str, fetch: Callable[[Session], Awaitable[Any]]) -> None:
    """One object read by small id: its fields, or NotFound (exit 1)."""

    async def action(s: Session):
        from .chain.types import to_jsonable

        found = await fetch(s)
        if found is None:
            raise _not_found(missing)
        doc = to_jsonable(found)
        return doc, lambda s: _render_fields(title, doc, s)

    _read_command(ctx, action)


@db_app.command("get-task")
def db_get_task(ctx: typer.Context, task_small_id: int = typer.Option(..., "--task-small-id", metavar="N")) -> None:
    """A task's fields."""
    _get_one(ctx, f"task {task_small_id}", f"task {task_small_id} not found", lambda s: s.chain.get_task(task_small_id))


@db_app.command("get-node")
def db_get_node(ctx: typer.Context, node_small_id: int = typer.Option(..., "--node-small-id", metavar="N")) -> None:
    """A node's entry (fees, reputation, disabled epoch)."""
    _get_one(ctx, f"node {node_small_id}", f"node {node_small_id} not found", lambda s: s.chain.get_node(node_small_id))


@db_app.command("get-stack")
def db_get_stack(ctx: typer.Context, stack_small_id: int = typer.Option(..., "--stack-small-id", metavar="N")) -> None:
    """A stack's fields (stacks claimed with claim-funds are deleted)."""
    _get_one(
        ctx,
        f"stack {stack_small_id}",
        f"stack {stack_small_id} not found (stacks claimed with claim-funds are deleted)",
        lambda s: s.chain.get_stack(stack_small_id),
    )


@db_app.command("get-ticket")
def db_get_ticket(ctx: typer.Context, stack_small_id: int = typer.Option(..., "--stack-small-id", metavar="N")) -> None:
    """A stack's settlement ticket (after try-settle-stack, until claimed)."""
    _get_one(
        ctx,
        f"settlement ticket of stack {stack_small_id}",
        f"no settlement ticket for stack {stack_small_id}",
        lambda s: s.chain.get_ticket(stack_small_id),
    )


@db_app.command("get-subscriptions")
def db_get_subscriptions(ctx: typer.Context, task_small_id: int = typer.Option(..., "--task-small-id", metavar="N")) -> None:
    """The nodes subscribed to a task and their prices."""

    async def action(s: Session):
        from .chain.types import to_jsonable

        if await s.chain.get_task(task_small_id) is None:
            raise _not_found(f"task {task_small_id} not found")
        subs = await s.chain.subscriptions(task_small_id)
        doc = {"task_small_id": task_small_id, "subscriptions": to_jsonable(subs)}

        def make(s: Session) -> Render:
            def render(con: "Console") -> None:
                con.print(f"[bold]task {task_small_id}[/]: {len(subs)} subscribed node(s)")
                for sub in subs:
                    con.print(
                        f"  node {sub.node_small_id}  {sub.price_per_one_million_compute_units} per 1M compute units "
                        f"(max {sub.max_num_compute_units} units)"
                    )

            return render

        return doc, make

    _read_command(ctx, action)


@db_app.command("list-events")
def db_list_events(
    ctx: typer.Context,
    cursor_tx_digest: Optional[str] = typer.Option(None, "--cursor-tx-digest", metavar="D", help="Start after this event…"),
    cursor_event_seq: Optional[int] = typer.Option(None, "--cursor-event-seq", metavar="N", help="…(both cursor flags together)."),
    limit: int = typer.Option(50, "--limit", metavar="N"),
) -> None:
    """The db module's events in execution order, a page at a time (like suix_queryEvents)."""

    async def action(s: Session):
        from .chain.types import EventId

        if (cursor_tx_digest is None) != (cursor_event_seq is None):
            raise CliInputError("give both --cursor-tx-digest and --cursor-event-seq, or neither")
        cursor = None if cursor_tx_digest is None else EventId(cursor_tx_digest, cursor_event_seq)
        page = await s.chain.events(cursor, limit)
        doc = {
            "data": [e.to_json() for e in page.events],
            "nextCursor": page.next_cursor.to_json() if page.next_cursor else None,
            "hasNextPage": page.has_next_page,
        }

        def make(s: Session) -> Render:
            def render(con: "Console") -> None:
                for e in page.events:
                    con.print(
                        f"{e.id.tx_digest}:{e.id.event_seq}  epoch {e.epoch}  [cyan]{e.name}[/]: {_esc(_event_summary(e, s))}"
                    )
                if not page.events:
                    con.print("no events")
                if page.has_next_page and page.next_cursor:
                    con.print(
                        f"more: --cursor-tx-digest {page.next_cursor.tx_digest} --cursor-event-seq {page.next_cursor.event_seq}"
                    )

            return render

        return doc, make

    _read_command(ctx, action)


@db_app.command("badges")
def db_badges(
    ctx: typer.Context,
    who: Optional[str] = typer.Argument(None, metavar="[ALIAS|0x…]", help="Whose badges (default: the acting address)."),
) -> None:
    """The Atoma badges (manager, node, task, stack) an address owns."""

    async def action(s: Session):
        from .chain.types import to_jsonable

        address = s.resolve_any(who)
        badges = await s.chain.badges(address)
        doc = {"address": address, "badges": to_jsonable(badges)}

        def make(s: Session) -> Render:
            def render(con: "Console") -> None:
                con.print(f"{_esc(s.label(address))}: {len(badges)} badge(s)")
                for b in badges:
                    small = f" {b.small_id}" if b.small_id is not None else ""
                    con.print(f"  {b.kind}{small}  {b.object_id}")

            return render

        return doc, make

    _read_command(ctx, action)


@db_app.command("get-transaction")
def db_get_transaction(ctx: typer.Context, digest: str = typer.Option(..., "--digest", metavar="D")) -> None:
    """The recorded effects of a transaction (successful or failed)."""

    async def action(s: Session):
        tx = await s.chain.get_transaction(digest)
        if tx is None:
            raise _not_found(f"no transaction with digest {digest}")

        def make(s: Session) -> Render:
            if tx.ok:
                return _render_tx(tx, "transaction", s)

            def render(con: "Console") -> None:
                con.print(f"[red]✗[/] transaction {tx.digest} failed (epoch {tx.epoch}, sender {_esc(s.label(tx.sender))})")
                con.print(f"  error: {_esc(json.dumps(tx.error))}")

            return render

        return tx.to_json(), make

    _read_command(ctx, action)


# Group the db subcommands in --help by who signs them.
_PANELS = {
    "Admin (AtomaManagerBadge / TaskBadge)": {
        "create-task-entry", "deprecate-task", "remove-deprecated-task", "remove-deprecated-task-by-admin",
        "whitelist-nodes-for-task", *(_kebab(s) for s in abi.ADMIN_SETTERS),
    },
    "Node (NodeBadge)": {
        "register-node", "subscribe-node-to-task", "update-node-subscription", "unsubscribe-node-from-task",
        "try-settle-stack", "submit-stack-settlement-attestation", "start-attestation-dispute", "claim-funds",
        "claim-funds-for-stacks", "withdraw-fees", "permanently-disable-node", "destroy-disabled-node",
    },
    "User (USDC)": {"acquire-new-stack-entry"},
    "Reads": {
        "get-task", "get-node", "get-stack", "get-ticket", "get-subscriptions", "list-events", "badges", "get-transaction",
    },
}
for _info in db_app.registered_commands:
    for _panel, _names in _PANELS.items():
        if _info.name in _names:
            _info.rich_help_panel = _panel


# --------------------------------------------------------------------------------------------------- node / stack: serving
node_app = typer.Typer(
    help="Run a serving node: the OpenAI-compatible HTTP server with compute-unit metering and stack history.",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)
stack_app = typer.Typer(
    help="Serve, inspect, commit, settle, replay and attest one stack (the node's side of the lifecycle).",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(node_app, name="node")
app.add_typer(stack_app, name="stack")


def _mount_ledger() -> None:
    # The ledger sub-app imports duckdb and pandas lazily inside its commands; mounting it costs little.
    from .ledger.cli import app as ledger_app

    app.add_typer(ledger_app, name="ledger", help="DuckDB ledger: sync, earnings, stacks, tickets, reconcile, export, plot.")


_mount_ledger()

NODE_OPT = typer.Option(
    None, "--node", metavar="ALIAS|0x…", help="The serving node (default: --address, else the stack's selected node)."
)
NODE_SMALL_ID_PICK_OPT = typer.Option(None, "--node-small-id", metavar="N", help="Pick among several NodeBadges.")
ENGINE_OPT = typer.Option("cpu", "--engine", metavar="cpu|openai|vllm", help="Inference engine (cpu: SmolLM2 on CPU).")
BASE_URL_OPT = typer.Option(None, "--openai-base-url", metavar="URL", help="OpenAI-compatible server (--engine openai).")
MODEL_OPT = typer.Option(None, "--model", metavar="NAME", help="Model name for the engine (default SmolLM2-135M-Instruct).")


def _serving_error_doc(exc: BaseException) -> Optional[tuple[dict, str]]:
    """Serving-side expected errors (refusals, engine failures, bad history or workload files)."""
    serving = sys.modules.get("atoma_ops.serving.metering")
    engines = sys.modules.get("atoma_ops.serving.engines.base")
    history = sys.modules.get("atoma_ops.serving.history")
    workload = sys.modules.get("atoma_ops.serving.workload")
    if serving is not None and isinstance(exc, serving.ServingError):
        return {"kind": exc.kind, **exc.to_json()}, f"{exc.kind}: {exc}"
    for module, name in ((engines, "EngineError"), (history, "HistoryError"), (workload, "WorkloadError")):
        if module is not None and isinstance(exc, getattr(module, name)):
            kind = getattr(exc, "kind", type(exc).__name__)
            return {"kind": kind, "message": str(exc)}, f"{kind}: {exc}"
    if isinstance(exc, ValueError) and type(exc).__module__.startswith("atoma_ops.serving"):
        return {"kind": type(exc).__name__, "message": str(exc)}, f"{type(exc).__name__}: {exc}"
    return None


def _serving_run(ctx: typer.Context, produce: Callable[[State], tuple[Any, Render]]) -> None:
    def guarded(state: State) -> tuple[Any, Render]:
        try:
            return produce(state)
        except typer.Exit:
            raise
        except Exception as exc:
            handled = _serving_error_doc(exc)
            if handled is None:
                raise
            _fail(state, *handled)
            raise  # pragma: no cover - _fail exits

    _run(ctx, guarded)


def _note(state: State, text: str) -> None:
    """Progress for people (stderr, never in --json mode)."""
    if not state.json:
        _console(stderr=True).print(f"[dim]{_esc(text)}[/]")


async def _node_for_stack(chain: "LocalnetChain", stack_small_id: Optional[int]) -> str:
    """The wallet alias owning the NodeBadge the stack was sold to."""
    if stack_small_id is None:
        raise CliInputError("say which node with --node ALIAS (or --address)")
    stack = await chain.get_stack(stack_small_id)
    if stack is None:
        raise _not_found(f"stack {stack_small_id} not found (stacks claimed with claim-funds are deleted); give --node")
    for alias, address in chain.wallet.aliases().items():
        if any(b.kind == "NodeBadge" and b.small_id == stack.selected_node_id for b in await chain.badges(address)):
            return alias
    raise CliInputError(f"stack {stack_small_id} was sold to node {stack.selected_node_id}, which no wallet alias holds; give --node")


def _with_node(
    state: State,
    node: Optional[str],
    stack_small_id: Optional[int],
    node_small_id: Optional[int],
    action: Callable[[Any], Awaitable[Any]],
    engine: Optional[Callable[[], Any]] = None,
    precheck: bool = False,
    max_pending: Optional[int] = None,
    fast_loop: bool = False,
) -> Any:
    """Open the localnet home and the node's service (its store under <home>/nodes/<alias>/), load the engine if
    asked (after the cheap checks; ``precheck``: the stack must be servable by this node), run ``action(service)``,
    close everything. ``max_pending``: the requests the service takes in progress at once (past it: 429)."""
    import asyncio

    from .home import LocalnetHome, resolve_home
    from .serving.node import NodeService

    async def main() -> Any:
        home = resolve_home(state.home)
        chain = LocalnetHome(home).open()
        service = None
        try:
            who = node or state.address or await _node_for_stack(chain, stack_small_id)
            options = {} if max_pending is None else {"max_pending": max_pending}
            service = await NodeService.open(home, who, None, node_small_id=node_small_id, chain=chain, **options)
            if precheck and stack_small_id is not None:
                await service.check_stack(stack_small_id)
            if engine is not None:
                service.engine = await asyncio.to_thread(engine)
            return await action(service)
        finally:
            if service is not None:
                await service.close()
            if service is not None and service.engine is not None:
                service.engine.close()
            await chain.close()

    if fast_loop:  # the HTTP server: uvloop (what uvicorn picks for itself), the relay of every token is cheaper
        try:
            import uvloop
        except ImportError:
            pass
        else:
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                return runner.run(main())
    return asyncio.run(main())


def _engine_loader(state: State, kind: str, base_url: Optional[str], model: Optional[str]) -> Callable[[], Any]:
    from .serving.node import ENGINE_KINDS

    if kind not in ENGINE_KINDS:
        raise CliInputError(f"--engine: {kind!r} is not one of {', '.join(ENGINE_KINDS)}")

    def load() -> Any:
        from .serving.node import load_engine

        _note(state, f"loading the {kind} engine…")
        return load_engine(kind, model=model, base_url=base_url)

    return load


def _usage_lines(con: "Console", u: dict) -> None:
    con.print(
        f"  units          {u['used_units']} used, {u['reserved_units']} reserved, {u['units_left']} left "
        f"of {u['num_compute_units']}"
    )
    con.print(f"  requests       {u['num_requests']} served, {u['in_flight']} in flight; state {u['state']}")


@node_app.command("serve")
def node_serve(
    ctx: typer.Context,
    node: str = typer.Option(..., "--node", metavar="ALIAS|0x…", help="The node's wallet alias or address."),
    engine: str = ENGINE_OPT,
    port: int = typer.Option(8000, "--port", metavar="N"),
    host: str = typer.Option("127.0.0.1", "--host", metavar="ADDR"),
    openai_base_url: Optional[str] = BASE_URL_OPT,
    model: Optional[str] = MODEL_OPT,
    max_pending: int = typer.Option(
        256, "--max-pending", metavar="N",
        help="Requests in progress at once (admitted, not yet recorded); past it the node answers 429 with Retry-After.",
    ),
    node_small_id: Optional[int] = NODE_SMALL_ID_PICK_OPT,
) -> None:
    """Serve OpenAI-compatible chat completions for the node's stacks (header X-Stack-Small-Id) until Ctrl-C."""

    def produce(state: State) -> tuple[Any, Render]:
        if max_pending < 1:
            raise CliInputError("--max-pending must be >= 1")
        load = _engine_loader(state, engine, openai_base_url, model)

        async def action(service: Any) -> dict:
            import uvicorn

            from .serving.server import create_app

            _note(
                state,
                f"node {service.node_small_id} ({service.alias}) serving on http://{host}:{port} with the "
                f"{engine} engine ({getattr(service.engine, 'model', '?')}), at most {service.max_pending} requests in "
                f"progress; store {service.store.path}",
            )
            config = uvicorn.Config(create_app(service), host=host, port=port, log_level="info")
            server = uvicorn.Server(config)
            await server.serve()
            if not server.started:
                raise OSError(f"could not listen on {host}:{port}")
            return {"node_small_id": service.node_small_id, "host": host, "port": port, "stopped": True}

        doc = _with_node(state, node, None, node_small_id, action, engine=load, max_pending=max_pending, fast_loop=True)
        return doc, lambda con: con.print("server stopped")

    _serving_run(ctx, produce)


@node_app.command("stacks")
def node_stacks(
    ctx: typer.Context,
    node: str = typer.Option(..., "--node", metavar="ALIAS|0x…", help="The node's wallet alias or address."),
    node_small_id: Optional[int] = NODE_SMALL_ID_PICK_OPT,
) -> None:
    """The stacks this node has served: units used, reserved and left, requests, settlement state."""

    def produce(state: State) -> tuple[Any, Render]:
        async def action(service: Any) -> dict:
            return {
                "node_small_id": service.node_small_id,
                "store": str(service.store.path),
                "stacks": [u.to_json() for u in service.store.stacks()],
            }

        doc = _with_node(state, node, None, node_small_id, action)

        def render(con: "Console") -> None:
            con.print(f"[bold]node {doc['node_small_id']}[/]: {len(doc['stacks'])} stack(s) served ({_esc(doc['store'])})")
            for u in doc["stacks"]:
                con.print(
                    f"  stack {u['stack_small_id']}: {u['used_units']} used, {u['units_left']} left of "
                    f"{u['num_compute_units']}; {u['num_requests']} requests; {u['state']}"
                )

        return doc, render

    _serving_run(ctx, produce)


@stack_app.command("serve")
def stack_serve(
    ctx: typer.Context,
    stack: int = typer.Option(..., "--stack", metavar="N", help="Stack small id."),
    workload: str = typer.Option(..., "--workload", metavar="FILE.jsonl", help="One chat request per line."),
    node: Optional[str] = NODE_OPT,
    engine: str = ENGINE_OPT,
    openai_base_url: Optional[str] = BASE_URL_OPT,
    model: Optional[str] = MODEL_OPT,
    concurrency: Optional[int] = typer.Option(
        None, "--concurrency", metavar="N", help="Requests in progress at once on the engine (default 8)."
    ),
    batch_size: Optional[int] = typer.Option(
        None, "--batch-size", metavar="N", hidden=True, help="Deprecated alias of --concurrency."
    ),
    node_small_id: Optional[int] = NODE_SMALL_ID_PICK_OPT,
) -> None:
    """Run a workload of chat requests on a stack (metered, recorded), CONCURRENCY at once; print the units used
    and left. Resumable: each line is recorded under an id of the workload's content, so a re-run (after a kill,
    a refusal or a finished run) serves only the lines not yet served or refused, and never charges twice."""

    def produce(state: State) -> tuple[Any, Render]:
        from .serving.workload import load_workload

        requests = load_workload(workload)
        if batch_size is not None:
            _note(state, "--batch-size is deprecated (nothing is batched any more): use --concurrency")
        width = concurrency if concurrency is not None else batch_size if batch_size is not None else 8
        if width < 1:
            raise CliInputError("--concurrency must be >= 1")
        load = _engine_loader(state, engine, openai_base_url, model)

        async def action(service: Any) -> dict:
            return await _serve_workload(state, service, stack, requests, width)

        doc = _with_node(state, node, stack, node_small_id, action, engine=load, precheck=True)
        return doc, lambda con: _render_served(con, doc)

    _serving_run(ctx, produce)


async def _serve_workload(state: State, service: Any, stack: int, requests: list, concurrency: int) -> dict:
    """``lifecycle.serve_workload`` with a transient progress bar on stderr (not under --json); the JSON document
    of ``stack serve``."""
    import time
    from contextlib import nullcontext

    from .lifecycle import serve_workload

    progress: Any = None
    if not state.json:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        progress = Progress(
            TextColumn("[dim]stack {task.fields[stack]}[/]"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[counts]}"), TimeElapsedColumn(),
            console=_console(stderr=True), transient=True,
        )
    counts = {"served": 0, "refused": 0, "failed": 0, "skipped": 0}
    bar = None

    def tick(what: str) -> None:
        counts[what] += 1
        if progress is not None and bar is not None:
            text = f"{counts['served']} served, {counts['refused']} refused"
            if counts["failed"]:
                text += f", {counts['failed']} failed"
            if counts["skipped"]:
                text += f", {counts['skipped']} done before"
            progress.update(bar, advance=1, counts=text)

    def landed(o: Any) -> None:
        tick("served" if o.ok else "refused" if o.error.final else "failed")

    t0 = time.perf_counter()
    with progress if progress is not None else nullcontext():
        if progress is not None:
            bar = progress.add_task("serve", total=len(requests), stack=stack, counts="")
        report, outcomes = await serve_workload(
            service, stack, requests, concurrency=concurrency,
            on_skipped=lambda i, seen: tick("skipped"), on_outcome=landed,
        )
    wall = time.perf_counter() - t0
    usage = service.store.usage(stack)
    return {
        "stack_small_id": stack,
        "node_small_id": service.node_small_id,
        "workload_id": report.workload_id,
        "requests": len(requests),
        "concurrency": concurrency,
        "served": report.served,
        "refused": len(report.refused),
        "failed": len(report.failed),
        "already_served": report.already_served,
        "already_refused": report.already_refused,
        "units_charged": report.units_charged,
        "completion_tokens": report.completion_tokens,
        "wall_s": round(wall, 3),
        "usage": usage.to_json() if usage else None,
        "outcomes": [_outcome_doc(o) for o in outcomes],
    }


def _outcome_doc(o: Any) -> dict:
    doc = o.to_json()
    if not o.ok:
        doc["retry"] = not o.error.final  # failed, not refused: nothing recorded, a re-run serves it again
    return doc


_SERVED_LINES = 50  # outcomes listed by a human ``stack serve``; --json has them all


def _render_served(con: "Console", doc: dict) -> None:
    skipped = doc["already_served"] + doc["already_refused"]
    line = (
        f"[green]✓[/] stack {doc['stack_small_id']} on node {doc['node_small_id']}: {doc['served']} of "
        f"{doc['requests']} request(s) served, {doc['refused']} refused"
    )
    if doc["failed"]:
        line += f", [red]{doc['failed']} failed[/] (not charged; a re-run serves them)"
    if skipped:
        line += f", {skipped} done before ({doc['already_served']} served, {doc['already_refused']} refused)"
    con.print(
        f"{line}; {doc['units_charged']} compute units charged ({doc['completion_tokens']} completion tokens in "
        f"{doc['wall_s']} s)"
    )
    shown = doc["outcomes"][:_SERVED_LINES]
    for o in shown:
        if o["ok"]:
            text = (o["content"] or "").replace("\n", " ")
            text = text if len(text) <= 60 else text[:57] + "…"
            reserved = f"(reserved {o['estimate']['reserved']})" if o.get("estimate") else "(served before)"
            con.print(f"  {o['index']:>3} → #{o['history_index']:<3} {o['units']:>5} units {reserved}  {_esc(text)}")
        else:
            con.print(f"  {o['index']:>3} [red]{'failed' if o.get('retry') else 'refused'}[/]: {_esc(o['error']['message'])}")
    if len(doc["outcomes"]) > len(shown):
        con.print(f"  … and {len(doc['outcomes']) - len(shown)} more (--json lists every one)")
    if doc["usage"]:
        _usage_lines(con, doc["usage"])


@stack_app.command("usage")
def stack_usage(
    ctx: typer.Context,
    stack: int = typer.Option(..., "--stack", metavar="N"),
    node: Optional[str] = NODE_OPT,
    node_small_id: Optional[int] = NODE_SMALL_ID_PICK_OPT,
) -> None:
    """Units used, reserved and left on a stack, as this node metered them."""

    def produce(state: State) -> tuple[Any, Render]:
        async def action(service: Any) -> dict:
            u = service.store.usage(stack)
            if u is None:
                facts = await service.check_stack(stack)
                return {
                    "stack_small_id": stack, "num_compute_units": facts.num_compute_units, "used_units": 0,
                    "reserved_units": 0, "units_left": facts.num_compute_units, "num_requests": 0, "in_flight": 0,
                    "overrun_units": 0, "state": "open", "selected_node_id": facts.selected_node_id,
                    "task_small_id": facts.task_small_id, "settlement": None,
                }
            return u.to_json()

        doc = _with_node(state, node, stack, node_small_id, action)

        def render(con: "Console") -> None:
            con.print(f"[bold]stack {stack}[/] (node {doc['selected_node_id']}, task {doc['task_small_id']})")
            _usage_lines(con, doc)

        return doc, render

    _serving_run(ctx, produce)


@stack_app.command("history")
def stack_history(
    ctx: typer.Context,
    stack: int = typer.Option(..., "--stack", metavar="N"),
    export: Optional[str] = typer.Option(None, "--export", metavar="FILE", help="Write the history as JSONL (for attesters)."),
    node: Optional[str] = NODE_OPT,
    node_small_id: Optional[int] = NODE_SMALL_ID_PICK_OPT,
) -> None:
    """The stack's served requests in order (units, hashes), and the Merkle root; --export writes the file."""

    def produce(state: State) -> tuple[Any, Render]:
        async def action(service: Any) -> tuple:
            from .serving.history import export_jsonl

            history = service.history(stack)
            path = str(export_jsonl(history, export)) if export else None
            return history, path

        history, path = _with_node(state, node, stack, node_small_id, action)
        root = history.root
        doc = {
            **history.header(),
            "exported_to": path,
            "entries": [
                {k: v for k, v in e.to_json().items() if k not in ("request", "response")} | {"content": e.content}
                for e in history.entries
            ],
        }

        def render(con: "Console") -> None:
            con.print(
                f"[bold]stack {stack}[/]: {len(history)} request(s), {history.units} compute units; "
                f"root {('0x' + root.hex()) if root else '—'}"
            )
            for e in history.entries:
                text = (e.content or "").replace("\n", " ")
                text = text if len(text) <= 50 else text[:47] + "…"
                con.print(f"  #{e.index:<3} {e.units:>5} units  leaf 0x{e.leaf.hex()[:16]}…  {_esc(text)}")
            if path:
                con.print(f"[green]✓[/] exported to {_esc(path)}")

        return doc, render

    _serving_run(ctx, produce)


@stack_app.command("commit")
def stack_commit(
    ctx: typer.Context,
    stack: int = typer.Option(..., "--stack", metavar="N"),
    node: Optional[str] = NODE_OPT,
    node_small_id: Optional[int] = NODE_SMALL_ID_PICK_OPT,
) -> None:
    """The commitment to the stack's history: R, committed_stack_proof, stack_merkle_leaf, claimed units."""

    def produce(state: State) -> tuple[Any, Render]:
        async def action(service: Any) -> dict:
            return (await service.commitment(stack)).to_json()

        doc = _with_node(state, node, stack, node_small_id, action)

        def render(con: "Console") -> None:
            con.print(f"[bold]commitment of stack {stack}[/] ({doc['num_requests']} requests)")
            con.print(f"  R                           {doc['root']}")
            con.print(f"  committed_stack_proof       {doc['committed_stack_proof']}")
            con.print(f"  stack_merkle_leaf           {doc['stack_merkle_leaf']}")
            con.print(f"  num_claimed_compute_units   {doc['num_claimed_compute_units']}")
            con.print(f"  extra attestation nodes     {doc['cross_validation_extra_nodes_count']}")

        return doc, render

    _serving_run(ctx, produce)


@stack_app.command("try-settle")
def stack_try_settle(
    ctx: typer.Context,
    stack: int = typer.Option(..., "--stack", metavar="N"),
    node: Optional[str] = NODE_OPT,
    node_small_id: Optional[int] = NODE_SMALL_ID_PICK_OPT,
) -> None:
    """Stop serving the stack, commit to its history and call try_settle_stack (claimed = metered usage)."""

    def produce(state: State) -> tuple[Any, Render]:
        async def action(service: Any) -> tuple:
            return await service.try_settle(stack), service

        result, service = _with_node(state, node, stack, node_small_id, action)
        doc = result.to_json()

        def render(con: "Console") -> None:
            if result.tx is not None:
                sess = Session(service.chain, state)
                _render_tx(result.tx, "stack try-settle (db::try_settle_stack)", sess)(con)
            else:
                con.print(f"[green]✓[/] stack {stack} was already settled with this commitment")
            con.print(f"  R {doc['root']}; claimed {doc['num_claimed_compute_units']} compute units")
            con.print(f"  attestation nodes requested: {doc['requested_attestation_nodes'] or 'none'}")

        return doc, render

    _serving_run(ctx, produce)


def _replay_render(doc: dict) -> Render:
    def render(con: "Console") -> None:
        mark = "[green]equal[/]" if doc["equal"] else "[red]DIVERGES[/]"
        con.print(f"replay of stack {doc['stack_small_id']}: {doc['num_requests']} request(s) in {doc['wall_s']} s — {mark}")
        con.print(f"  history root   {doc['history_root']}")
        con.print(f"  replayed root  {doc['replayed_root']}")
        d = doc.get("first_divergence")
        if d:
            con.print(f"  first divergence at request {d['index']} ({doc['num_diverging']} diverging):")
            con.print(f"    stored:   {_esc(repr(d['stored_content']))}")
            con.print(f"    replayed: {_esc(repr(d['replayed_content']))}")

    return render


@stack_app.command("replay")
def stack_replay(
    ctx: typer.Context,
    stack: int = typer.Option(..., "--stack", metavar="N"),
    history_file: Optional[str] = typer.Option(
        None, "--history", metavar="FILE", help="A history export to replay (default: the node's own history)."
    ),
    node: Optional[str] = NODE_OPT,
    engine: str = ENGINE_OPT,
    openai_base_url: Optional[str] = BASE_URL_OPT,
    model: Optional[str] = MODEL_OPT,
    node_small_id: Optional[int] = NODE_SMALL_ID_PICK_OPT,
) -> None:
    """Re-run a stack's history through the engine; report whether every response and R match (exit 0 either way;
    see "equal")."""

    def produce(state: State) -> tuple[Any, Render]:
        from .serving.replay import replay

        load = _engine_loader(state, engine, openai_base_url, model)
        if history_file is not None:
            from .serving.history import import_jsonl

            history = import_jsonl(history_file, expect_stack=stack)
            eng = load()
            try:
                report = replay(history, eng)
            finally:
                eng.close()
        else:

            async def action(service: Any) -> Any:
                import asyncio

                history = service.history(stack)
                if not history.entries:
                    from .serving.metering import NothingToCommit

                    raise NothingToCommit(f"stack {stack} has no served requests on this node: nothing to replay")
                return await asyncio.to_thread(replay, history, service.engine)

            report = _with_node(state, node, stack, node_small_id, action, engine=load)
        doc = report.to_json()
        return doc, _replay_render(doc)

    _serving_run(ctx, produce)


@stack_app.command("attest")
def stack_attest(
    ctx: typer.Context,
    stack: int = typer.Option(..., "--stack", metavar="N"),
    history_file: str = typer.Option(..., "--history", metavar="FILE", help="The serving node's history export."),
    node: Optional[str] = typer.Option(None, "--node", metavar="ALIAS|0x…", help="The attesting node (default: --address)."),
    engine: str = ENGINE_OPT,
    openai_base_url: Optional[str] = BASE_URL_OPT,
    model: Optional[str] = MODEL_OPT,
    node_small_id: Optional[int] = NODE_SMALL_ID_PICK_OPT,
) -> None:
    """As a requested attestation node: replay the history and submit the replayed commitment."""

    def produce(state: State) -> tuple[Any, Render]:
        from .serving.history import import_jsonl

        if node is None and state.address is None:
            raise CliInputError("say which node attests with --node ALIAS (or --address)")
        history = import_jsonl(history_file, expect_stack=stack)
        load = _engine_loader(state, engine, openai_base_url, model)

        async def action(service: Any) -> tuple:
            return await service.attest(stack, history), service

        result, service = _with_node(state, node, stack, node_small_id, action, engine=load)
        doc = result.to_json()

        def render(con: "Console") -> None:
            _replay_render(doc["replay"])(con)
            _render_tx(result.tx, f"attestation at position {doc['position']}", Session(service.chain, state))(con)
            if doc["disputed"]:
                con.print("[red]the attestation opened a dispute[/]")
            elif doc["attestations_complete"]:
                con.print("[green]all attestations in: no dispute[/]")

        return doc, render

    _serving_run(ctx, produce)


# --------------------------------------------------------------------------------------------------- entry point
def _json_requested(args: list[str]) -> bool:
    return "--json" in (args[: args.index("--")] if "--" in args else args)


def main(argv: Optional[List[str]] = None) -> int:
    """Console-script entry point. Usage errors exit 2 (with a JSON error document too when --json is given)."""
    # typer 0.29 vendors click; take its exception classes from an exported one so this works either way.
    classes = {c.__name__: c for c in typer.BadParameter.__mro__}
    ClickException, UsageError = classes["ClickException"], classes["UsageError"]

    args = list(sys.argv[1:] if argv is None else argv)
    try:
        rv = app(args=args, prog_name="atoma-ops", standalone_mode=False)
    except ClickException as exc:
        is_help = type(exc).__name__ == "NoArgsIsHelpError"  # typer already printed the help
        if isinstance(exc, UsageError) and _json_requested(args) and not is_help:
            _emit_json({"error": {"kind": "UsageError", "message": exc.format_message()}})
        try:
            from typer import rich_utils

            rich_utils.rich_format_error(exc)
        except Exception:  # pragma: no cover - fall back to click's plain message
            exc.show()
        return exc.exit_code
    except typer.Abort:
        typer.echo("Aborted!", err=True)
        return 1
    return rv if isinstance(rv, int) else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
