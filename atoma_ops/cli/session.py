"""One opened localnet home for a command (``Session``), and how chain results are shown: transactions with their
events, object and balance changes, and plain field lists."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Optional

import typer

from ..protocol.events import small_id
from .core import Render, State, esc, run
from .errors import CliInputError

if TYPE_CHECKING:  # pragma: no cover
    from rich.console import Console

    from ..chain.localnet.adapter import LocalnetChain
    from ..chain.types import ChainEvent, TxResult


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


NETWORKS = ("localnet", "testnet", "custom")


async def open_chain(state: Any) -> Any:
    """The Chain port of ``--network`` through the factory the Prefect blocks use (``atoma_ops.connect``): the
    localnet of ``--home``, or Sui (``testnet``: the published ids, each overridable; ``custom``: all given) acting
    through ``--client-yaml`` (default: the home's wallet)."""
    from ..connect import connect_chain
    from ..home import resolve_home

    network = getattr(state, "network", "localnet")
    home = resolve_home(getattr(state, "home", None))
    if network not in NETWORKS:
        raise CliInputError(f"--network: {network!r} is not one of {', '.join(NETWORKS)}")
    if network == "localnet":
        return await connect_chain("localnet", home)
    from ..chain.sui.networks import sui_network
    from ..wallet import Wallet

    settings = sui_network(network, endpoint=state.sui_endpoint, package_id=state.package_id, db_id=state.db_id,
                           usdc_coin_type=state.usdc_coin_type)
    wallet = Wallet.load(state.client_yaml or home / "client.yaml")
    return await connect_chain("sui", home, sui=settings, wallet=wallet, active=state.address)


def localnet_only(state: State, what: str) -> None:
    """Refuse, by name, what only the embedded localnet has (its faucet, its clock, its random stream)."""
    if state.network != "localnet":
        raise CliInputError(f"{what} exists on the embedded localnet only (--network {state.network})",
                            kind="LocalnetOnly")


def with_chain(state: State, action: Callable[[Session], Awaitable[Any]]) -> tuple[Any, Session]:
    """Open the network's chain, run ``action`` in a fresh event loop, close the chain."""
    import asyncio

    async def main() -> tuple[Any, Session]:
        chain = await open_chain(state)
        try:
            session = Session(chain, state)
            return await action(session), session
        finally:
            await chain.close()

    return asyncio.run(main())


def sid(value: Any) -> Any:
    """A small id from parsed JSON (``{"inner": "3"}``, :func:`atoma_ops.protocol.events.small_id`), or the value as
    it is when it is not one."""
    try:
        return small_id(value)
    except ValueError:
        return value


def signed_usdc(delta: int) -> str:
    from ..protocol.money import format_usdc

    return ("+" if delta >= 0 else "") + format_usdc(delta)


def short_type(type_: str) -> str:
    if "::coin::Coin<" in type_:
        return "Coin<USDC>"
    return type_.rsplit("::", 1)[-1]


def event_summary(e: "ChainEvent", s: Session) -> str:
    p, n = e.parsed_json, e.name
    if n == "PublishedEvent":
        return f"package published: AtomaDb {p.get('db')}, manager badge {p.get('manager_badge')}"
    if n == "NodeRegisteredEvent":
        return f"node {sid(p['node_small_id'])} registered (NodeBadge {p['badge_id']})"
    if n == "TaskRegisteredEvent":
        model, minimum = p.get("model_name"), p.get("minimum_reputation_score")
        return (
            f"task {sid(p['task_small_id'])} created: role {sid(p['role'])}, model {model if model is not None else 'none'}, "
            f"security level {sid(p['security_level'])}, minimum reputation {minimum if minimum is not None else 'none'}"
        )
    if n == "TaskDeprecationEvent":
        return f"task {sid(p['task_small_id'])} deprecated in epoch {p['epoch']}"
    if n == "TaskRemovedEvent":
        return f"task {sid(p['task_small_id'])} removed in epoch {p['removed_at_epoch']}"
    if n == "NodeSubscribedToTaskEvent":
        return (
            f"node {sid(p['node_small_id'])} subscribed to task {sid(p['task_small_id'])} at "
            f"{p['price_per_one_million_compute_units']} per 1M compute units (max {p['max_num_compute_units']} units)"
        )
    if n == "NodeSubscriptionUpdatedEvent":
        return (
            f"node {sid(p['node_small_id'])} now asks {p['price_per_one_million_compute_units']} per 1M compute units "
            f"on task {sid(p['task_small_id'])}"
        )
    if n == "NodeUnsubscribedFromTaskEvent":
        return f"node {sid(p['node_small_id'])} unsubscribed from task {sid(p['task_small_id'])}"
    if n == "StackCreatedEvent":
        return (
            f"stack {sid(p['stack_small_id'])} → node {sid(p['selected_node_id'])} (task {sid(p['task_small_id'])}, "
            f"{p['num_compute_units']} compute units at {p['price_per_one_million_compute_units']} per 1M, "
            f"owner {s.short(p['owner'])})"
        )
    if n == "StackTrySettleEvent":
        att = [sid(x) for x in p.get("requested_attestation_nodes", [])]
        return (
            f"stack {sid(p['stack_small_id'])} settled by node {sid(p['selected_node_id'])}: "
            f"{p['num_claimed_compute_units']} compute units claimed; attestation nodes {att or 'none'}"
        )
    if n == "NewStackSettlementAttestationEvent":
        return f"stack {sid(p['stack_small_id'])} attested by node {sid(p['attestation_node_id'])}"
    if n == "StackSettlementTicketEvent":
        return f"stack {sid(p['stack_small_id'])}: all attestations in (epoch {p['dispute_settled_at_epoch']})"
    if n == "StackAttestationDisputeEvent":
        return (
            f"stack {sid(p['stack_small_id'])} disputed by node {sid(p['attestation_node_id'])} "
            f"(settled by node {sid(p['original_node_id'])})"
        )
    if n == "StackSettlementTicketClaimedEvent":
        return (
            f"stack {sid(p['stack_small_id'])} claimed by node {sid(p['selected_node_id'])}: "
            f"{p['num_claimed_compute_units']} compute units, refund {p['user_refund_amount']} to the owner"
        )
    if n == "ClaimedStackEvent":
        return (
            f"stack {sid(p['stack_small_id'])} claimed by node {sid(p['selected_node_id'])} (confidential path): "
            f"{p['num_claimed_compute_units']} compute units, refund {p['user_refund_amount']} to the owner"
        )
    return f"{n} {json.dumps(p, separators=(',', ':'))}"


def render_tx(tx: "TxResult", title: str, s: Session) -> Render:
    def render(con: "Console") -> None:
        con.print(f"[green]✓[/] [bold]{esc(title)}[/]  digest {tx.digest}  (epoch {tx.epoch}, sender {esc(s.short(tx.sender))})")
        for e in tx.events:
            con.print(f"  [cyan]{e.name}[/]: {esc(event_summary(e, s))}")
        for c in tx.object_changes:
            if c.change == "created":
                con.print(f"  created {short_type(c.type)} {c.object_id} → {esc(s.short(c.owner))}")
            elif c.change == "deleted":
                con.print(f"  deleted {short_type(c.type)} {c.object_id}")
        for address, delta in tx.balance_changes.items():
            con.print(f"  USDC {esc(s.short(address))}: {signed_usdc(delta)} ({delta:+d} base units)")

    return render


def tx_command(ctx: typer.Context, title: str, call: Callable[[Session], Awaitable["TxResult"]]) -> None:
    def produce(state: State) -> tuple[Any, Render]:
        tx, s = with_chain(state, call)
        return tx.to_json(), render_tx(tx, title, s)

    run(ctx, produce)


def render_fields(title: str, fields: dict, s: Session) -> Render:
    def render(con: "Console") -> None:
        con.print(f"[bold]{esc(title)}[/]")
        width = max((len(k) for k in fields), default=0)
        for k, v in fields.items():
            if isinstance(v, bytes):
                v = "0x" + v.hex()
            elif v is None:
                v = "—"
            elif isinstance(v, str) and v.startswith("0x") and len(v) == 66:
                v = s.label(v)
            con.print(f"  {k.ljust(width)}  {esc(v)}")

    return render

