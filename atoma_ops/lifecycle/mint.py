"""Stage 1, mint-usdc: make an address hold enough USDC (the localnet's faucet; on Sui, say where to get it).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from ..chain.errors import InvalidArgument
from ..chain.port import Chain
from ..core.failpoints import failpoint
from ..journal import (
    FINISHED,
    JournalStore,
)
from ..protocol.constants import U64_MAX
from .common import StageError


@dataclass
class MintReport:
    address: str
    wanted: int
    balance_before: int
    minted: int
    balance_after: int
    digest: str | None = None


async def mint_usdc(
    chain: Chain, recipient: str, amount: int, *, journal: JournalStore | None = None, key: str | None = None
) -> MintReport:
    """Make ``recipient`` hold at least ``amount`` USDC base units: mint the difference from the localnet's faucet.

    Top-up semantics make a re-run harmless (it mints nothing the second time). With a ``key`` (and a journal) the
    top-up happens once per key: a later run under the same key, after the USDC was spent, mints nothing. On Sui,
    test USDC comes from Circle's faucet web page: a shortfall raises :class:`StageError` saying what is missing and
    where to get it.
    """
    if amount < 0 or amount > U64_MAX:
        raise InvalidArgument(f"amount must be between 0 and {U64_MAX}, not {amount}")
    address = chain.wallet.resolve(recipient)  # type: ignore[attr-defined]
    before = await chain.usdc_balance(address)
    row_key = f"faucet_mint:{key}" if key is not None and journal is not None else None
    if row_key is not None:
        earlier = (await asyncio.to_thread(journal.actions, [row_key])).get(row_key)  # type: ignore[union-attr]
        if earlier is not None and earlier["status"] in FINISHED:
            return MintReport(address, amount, before, 0, before, earlier["digest"])
    report = await _top_up(chain, address, amount, before)
    if report.minted:
        failpoint("faucet:after-mint")  # minted, not yet journaled: the top-up must not mint again
    if row_key is not None:
        await asyncio.to_thread(
            journal.record_actions,  # type: ignore[union-attr]
            [{"idempotency_key": row_key, "kind": "faucet_mint", "status": "success" if report.minted else "already_done",
              "sender": address, "args": {"amount": amount}, "digest": report.digest}],
        )
    return report


async def _top_up(chain: Chain, address: str, amount: int, before: int) -> MintReport:
    missing = amount - before
    if missing <= 0:
        return MintReport(address, amount, before, 0, before)
    faucet = getattr(chain, "faucet_mint", None)
    if faucet is None:
        raise StageError(
            f"{address} holds {before} USDC base units, {missing} short of {amount}. Test USDC on Sui testnet comes "
            "from Circle's faucet (https://faucet.circle.com, network Sui): request it for this address and run again."
        )
    tx = await faucet(address, missing)
    return MintReport(address, amount, before, missing, await chain.usdc_balance(address), tx.digest)
