"""``atoma-ops localnet …``: create and drive the embedded localnet."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import typer

from .core import Render, State, esc, run, sub_app
from .errors import CliInputError
from .session import Session, localnet_only, with_chain

if TYPE_CHECKING:  # pragma: no cover
    from rich.console import Console

localnet_app = sub_app("Create and drive the embedded localnet (epochs, randomness, status).")


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
        localnet_only(state, "`localnet init`")
        from ..home import LocalnetHome, resolve_home

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
            con.print(f"[green]✓[/] localnet initialised in [bold]{esc(doc['home'])}[/]")
            con.print(f"  package        {doc['package_id']}")
            con.print(f"  AtomaDb        {doc['db_id']}")
            con.print(f"  manager badge  {doc['manager_badge']} (admin)")
            con.print(f"  USDC type      {doc['usdc_type']}")
            epochs = f"every {epoch_duration_ms} ms" if epoch_duration_ms else "manual (`localnet advance-epoch`)"
            con.print(f"  seed {seed}; epochs: {epochs}")
            con.print(f"Addresses (keys stay in {esc(doc['keystore'])}, mode 0600):")
            width = max(len(a) for a in aliases)
            for alias, address in aliases.items():
                active = "  (active)" if address == doc["active_address"] else ""
                con.print(f"  {alias.ljust(width)}  {address}{active}")

        return doc, render

    run(ctx, produce)


@localnet_app.command("status")
def localnet_status(ctx: typer.Context) -> None:
    """Epoch and clock, package and AtomaDb ids, treasuries, small-id counters and USDC totals."""

    async def action(s: Session) -> dict:
        net = s.chain.localnet
        cfg = await s.chain.db_config()
        from ..core.jsonable import to_jsonable

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
        localnet_only(state, "`localnet status`")
        doc, s = with_chain(state, action)

        def render(con: "Console") -> None:
            from ..protocol.money import format_usdc

            clock = doc["clock"]
            con.print(f"[bold]localnet[/] {esc(doc['home'])}  (chain {doc['chain_id']})")
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

    run(ctx, produce)


@localnet_app.command("advance-epoch")
def localnet_advance_epoch(
    ctx: typer.Context, count: int = typer.Option(1, "--count", metavar="N", help="How many epochs to advance.")
) -> None:
    """Move the localnet to a later epoch (what ~24 h does on Sui)."""

    from ..protocol.epochs import MAX_EPOCH

    if not 1 <= count <= MAX_EPOCH:
        raise CliInputError(f"--count must be between 1 and {MAX_EPOCH}, not {count}")

    async def action(s: Session) -> int:
        return await s.chain.advance_epoch(count)

    def produce(state: State) -> tuple[Any, Render]:
        localnet_only(state, "`localnet advance-epoch`")
        epoch, _ = with_chain(state, action)
        return {"epoch": epoch}, lambda con: con.print(f"[green]✓[/] epoch is now {epoch}")

    run(ctx, produce)


@localnet_app.command("seed-rng")
def localnet_seed_rng(
    ctx: typer.Context, seed: int = typer.Option(..., "--seed", metavar="N", help="New seed; the draw counter restarts.")
) -> None:
    """Reseed the localnet's random stream (stands in for sui::random)."""

    from ..protocol.epochs import MAX_SEED

    if not 0 <= seed <= MAX_SEED:
        raise CliInputError(f"--seed must be between 0 and {MAX_SEED}, not {seed}")

    async def action(s: Session) -> None:
        await s.chain.seed_rng(seed)

    def produce(state: State) -> tuple[Any, Render]:
        localnet_only(state, "`localnet seed-rng`")
        with_chain(state, action)
        return {"seed": seed}, lambda con: con.print(f"[green]✓[/] random stream reseeded with {seed}")

    run(ctx, produce)

