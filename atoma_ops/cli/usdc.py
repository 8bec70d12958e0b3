"""``atoma-ops usdc …``: test USDC from the localnet faucet, balances and coins."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

import typer

from .core import Render, State, esc, run, sub_app
from .session import Session, localnet_only, with_chain

if TYPE_CHECKING:  # pragma: no cover
    from rich.console import Console

    from ..chain.types import TxResult

usdc_app = sub_app("Test USDC (6 decimals): mint from the localnet faucet, balances, coins.")


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
        localnet_only(state, "the USDC faucet (`usdc mint`; on Sui testnet: https://faucet.circle.com)")
        from ..protocol.money import format_usdc

        (tx, recipient, balance), s = with_chain(state, action)

        def render(con: "Console") -> None:
            con.print(
                f"[green]✓[/] minted {format_usdc(amount)} USDC ({amount} base units) to {esc(s.label(recipient))}"
            )
            con.print(f"  digest {tx.digest}; balance now {format_usdc(balance)} USDC ({balance} base units)")

        return tx.to_json(), render

    run(ctx, produce)


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
        from ..protocol.money import format_usdc

        (address, units), s = with_chain(state, action)
        doc = {"address": address, "base_units": units, "usdc": format_usdc(units)}
        return doc, lambda con: con.print(f"{esc(s.label(address))}: {doc['usdc']} USDC ({units} base units)")

    run(ctx, produce)


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
        from ..core.jsonable import to_jsonable
        from ..protocol.money import format_usdc

        (address, coins), s = with_chain(state, action)
        total = sum(c.balance for c in coins)
        doc = {"address": address, "coins": to_jsonable(coins), "base_units": total, "usdc": format_usdc(total)}

        def render(con: "Console") -> None:
            con.print(f"{esc(s.label(address))}: {len(coins)} USDC coin(s), {format_usdc(total)} USDC")
            for c in coins:
                con.print(f"  {c.object_id}  {format_usdc(c.balance)} ({c.balance})  v{c.version}")

        return doc, render

    run(ctx, produce)

