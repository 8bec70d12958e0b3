"""``atoma-ops db …`` reads (tasks, nodes, stacks, tickets, subscriptions, events, badges, transactions) and the
grouping of every db command in ``--help`` by who signs it."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Optional

import typer

from ..protocol import abi
from .core import Render, State, esc, run
from .db import db_app
from .errors import CliInputError
from .inputs import kebab, stored_id

MAX_PAGE = 1000  # events per page (Sui answers at most 50)
from .session import Session, event_summary, render_fields, render_tx, with_chain

if TYPE_CHECKING:  # pragma: no cover
    from rich.console import Console


# --------------------------------------------------------------------------------------------------- db: reads
def _read_command(ctx: typer.Context, action: Callable[[Session], Awaitable[tuple[Any, Callable[[Session], Render]]]]) -> None:
    def produce(state: State) -> tuple[Any, Render]:
        (doc, make_render), s = with_chain(state, action)
        return doc, make_render(s)

    run(ctx, produce)


def not_found(what: str) -> Exception:
    from ..chain.errors import NotFound

    return NotFound(what)


def _get_one(ctx: typer.Context, title: str, missing: str, fetch: Callable[[Session], Awaitable[Any]]) -> None:
    """One object read by small id: its fields, or NotFound (exit 1)."""

    async def action(s: Session):
        from ..core.jsonable import to_jsonable

        found = await fetch(s)
        if found is None:
            raise not_found(missing)
        doc = to_jsonable(found)
        return doc, lambda s: render_fields(title, doc, s)

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
        from ..core.jsonable import to_jsonable

        if await s.chain.get_task(task_small_id) is None:
            raise not_found(f"task {task_small_id} not found")
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
        from ..chain.types import EventId

        if (cursor_tx_digest is None) != (cursor_event_seq is None):
            raise CliInputError("give both --cursor-tx-digest and --cursor-event-seq, or neither")
        if cursor_event_seq is not None:
            stored_id("--cursor-event-seq", cursor_event_seq)
        if not 1 <= limit <= MAX_PAGE:
            raise CliInputError(f"--limit must be between 1 and {MAX_PAGE}, not {limit}")
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
                        f"{e.id.tx_digest}:{e.id.event_seq}  epoch {e.epoch}  [cyan]{e.name}[/]: {esc(event_summary(e, s))}"
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
        from ..core.jsonable import to_jsonable

        address = s.resolve_any(who)
        badges = await s.chain.badges(address)
        doc = {"address": address, "badges": to_jsonable(badges)}

        def make(s: Session) -> Render:
            def render(con: "Console") -> None:
                con.print(f"{esc(s.label(address))}: {len(badges)} badge(s)")
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
            raise not_found(f"no transaction with digest {digest}")

        def make(s: Session) -> Render:
            if tx.ok:
                return render_tx(tx, "transaction", s)

            def render(con: "Console") -> None:
                con.print(f"[red]✗[/] transaction {tx.digest} failed (epoch {tx.epoch}, sender {esc(s.label(tx.sender))})")
                con.print(f"  error: {esc(json.dumps(tx.error))}")

            return render

        return tx.to_json(), make

    _read_command(ctx, action)


# Group the db subcommands in --help by who signs them.
_PANELS = {
    "Admin (AtomaManagerBadge / TaskBadge)": {
        "create-task-entry", "deprecate-task", "remove-deprecated-task", "remove-deprecated-task-by-admin",
        "whitelist-nodes-for-task", *(kebab(s) for s in abi.ADMIN_SETTERS),
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

