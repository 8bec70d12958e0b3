"""The Chain port over the embedded localnet."""

from __future__ import annotations

import asyncio
from typing import Any

from ...protocol import abi
from ...wallet import Wallet, normalize_address
from .. import codec
from ..errors import InvalidArgument
from ..port import BADGE_HINTS, Chain, select_badge
from ..types import (
    Badge,
    Coin,
    DbConfig,
    EventId,
    EventPage,
    Node,
    PreparedTransaction,
    Stack,
    Subscription,
    Task,
    Ticket,
    TxResult,
)
from ..digests import transaction_digest
from .engine import Localnet

# Hints that pick a badge among the sender's objects; not Move parameters.
class LocalnetChain(Chain):
    """Chain port adapter for a :class:`Localnet`, signing with a :class:`Wallet`.

    Engine calls are short SQLite transactions; they run in a worker thread so an event loop never blocks on
    another process's write lock.
    """

    def __init__(self, localnet: Localnet, wallet: Wallet):
        self.localnet = localnet
        self.wallet = wallet

    # localnet-only operations
    async def faucet_mint(self, recipient: str, amount: int) -> TxResult:
        return await asyncio.to_thread(self.localnet.faucet_mint, recipient, amount)

    async def advance_epoch(self, count: int = 1) -> int:
        return await asyncio.to_thread(self.localnet.advance_epoch, count)

    async def seed_rng(self, seed: int) -> None:
        await asyncio.to_thread(self.localnet.seed_rng, seed)

    # reads
    async def current_epoch(self) -> int:
        return self.localnet.current_epoch()

    async def db_config(self) -> DbConfig:
        return self.localnet.db_config()

    async def get_task(self, task_small_id: int) -> Task | None:
        return self.localnet.get_task(task_small_id)

    async def get_node(self, node_small_id: int) -> Node | None:
        return self.localnet.get_node(node_small_id)

    async def get_stack(self, stack_small_id: int) -> Stack | None:
        return self.localnet.get_stack(stack_small_id)

    async def get_ticket(self, stack_small_id: int) -> Ticket | None:
        return self.localnet.get_ticket(stack_small_id)

    async def subscriptions(self, task_small_id: int) -> list[Subscription]:
        return self.localnet.subscriptions(task_small_id)

    async def usdc_coins(self, address: str) -> list[Coin]:
        return self.localnet.usdc_coins(address)

    async def badges(self, address: str) -> list[Badge]:
        return self.localnet.badges(address)

    async def events(self, cursor: EventId | None = None, limit: int = 50) -> EventPage:
        return self.localnet.events(cursor, limit)

    async def get_transaction(self, digest: str) -> TxResult | None:
        return self.localnet.get_transaction(digest)

    # writes
    def _find_badge(self, sender: str, kind: str, explicit: Any, hint: Any) -> str:
        if explicit is not None:
            try:
                return normalize_address(str(explicit))
            except ValueError:
                raise InvalidArgument(f"{explicit!r} is not an object id") from None
        label = self.wallet.alias_of(sender) or sender
        return select_badge([(b, b.object_id) for b in self.localnet.badges(sender)], kind, hint, label)

    async def prepare(self, sender: str, function: str, args: dict[str, Any]) -> PreparedTransaction:
        params = abi.ENTRY_FUNCTIONS.get(function)
        if params is None:
            raise InvalidArgument(f"db::{function} is not an entry function")
        sender = self.wallet.resolve(sender)
        args = dict(args)
        names = {p.name for p in params}
        commands: list[dict] = []
        arguments: list[Any] = [self.localnet.db_id]
        for param in params:
            value = args.pop(param.name, None)
            if param.type == abi.RANDOM:
                arguments.append(abi.RANDOM_OBJECT_ID)
            elif param.type == abi.USDC_COIN_MUT:
                if value is None:
                    coins = self.localnet.usdc_coins(sender)
                    if not coins:
                        raise InvalidArgument(f"{self.wallet.alias_of(sender) or sender} has no USDC coins")
                    value = coins[0].object_id
                    if len(coins) > 1:
                        # As the proxy does: merge every USDC coin into one before paying.
                        commands.append(
                            {"kind": "MergeCoins", "destination": value, "sources": [c.object_id for c in coins[1:]]}
                        )
                try:
                    arguments.append(normalize_address(str(value)))
                except ValueError:
                    raise InvalidArgument(f"{value!r} is not an object id") from None
            elif param.is_object:
                kind = abi.badge_kind(param.type)
                hint_name = BADGE_HINTS.get(kind)
                hint = args.pop(hint_name, None) if hint_name and hint_name not in names else None
                arguments.append(self._find_badge(sender, kind, value, hint))
            else:
                if value is None and not param.type.startswith("Option"):
                    raise InvalidArgument(f"missing argument {param.name} ({param.type})")
                arguments.append(codec.to_wire(param.type, codec.check_value(param.name, param.type, value)))
        leftover = {k: v for k, v in args.items() if v is not None}
        if leftover:
            raise InvalidArgument(f"db::{function} has no parameter {', '.join(sorted(leftover))}")
        commands.append(
            {"kind": "MoveCall", "package": self.localnet.package_id, "module": "db", "function": function, "arguments": arguments}
        )
        tx_bytes = self.localnet.build_transaction(sender, commands)
        return PreparedTransaction(tx_bytes=tx_bytes, digest=transaction_digest(tx_bytes), sender=sender, function=function)

    def sign(self, prepared: PreparedTransaction) -> str:
        return self.wallet.sign(prepared.sender, prepared.tx_bytes)

    async def execute(self, prepared: PreparedTransaction, signature: str) -> TxResult:
        return await asyncio.to_thread(self.localnet.execute, prepared.tx_bytes, [signature])

    async def close(self) -> None:
        self.localnet.close()
