"""The Chain port: one async interface over the Atoma contract, the same for the localnet and Sui adapters.

Adapters implement the abstract reads plus ``prepare``/``execute``; every entry function of ``atoma::db`` is a
method here, named as in the contract, so flows and the CLI never build calls by hand. Badges and USDC coins are
found among the sender's objects when not given, as the Atoma CLI does.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Sequence, TypeVar

from .types import (
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


#: the argument that picks one badge among several of a kind (as the Atoma CLI's ``--node-small-id``)
BADGE_HINTS = {"NodeBadge": "node_small_id", "TaskBadge": "task_small_id"}

_Ref = TypeVar("_Ref")


def select_badge(owned: Sequence[tuple[Badge, _Ref]], kind: str, hint: Any, label: str) -> _Ref:
    """The one badge of ``kind`` among ``owned`` (badge, reference) pairs, narrowed by a small-id ``hint``.

    Raises:
        InvalidArgument: none, or several and no hint to choose.
    """
    from . import codec
    from ..protocol import abi
    from .errors import InvalidArgument

    owned = [o for o in owned if o[0].kind == kind]
    if hint is not None:
        hint = codec.check_value(BADGE_HINTS.get(kind, "small_id"), abi.U64, hint)
        owned = [o for o in owned if o[0].small_id == hint]
        if not owned:
            raise InvalidArgument(f"{label} owns no {kind} with small id {hint}")
    if not owned:
        raise InvalidArgument(f"{label} owns no {kind}")
    if len(owned) > 1:
        ids = ", ".join(str(o[0].small_id) for o in owned)
        raise InvalidArgument(f"{label} owns several {kind}s (small ids {ids}); say which")
    return owned[0][1]


class Chain(ABC):
    """Async access to one deployment of the Atoma contract, acting through one wallet."""

    #: True when a transaction pins object versions another of the same sender would use (Sui's gas coin): the
    #: intent journal then prepares, signs and submits writes one at a time instead of as one batch
    sequential_writes: bool = False

    # ------------------------------------------------------------------ reads
    @abstractmethod
    async def current_epoch(self) -> int: ...

    @abstractmethod
    async def db_config(self) -> DbConfig: ...

    @abstractmethod
    async def get_task(self, task_small_id: int) -> Task | None: ...

    @abstractmethod
    async def get_node(self, node_small_id: int) -> Node | None: ...

    @abstractmethod
    async def get_stack(self, stack_small_id: int) -> Stack | None: ...

    @abstractmethod
    async def get_ticket(self, stack_small_id: int) -> Ticket | None: ...

    @abstractmethod
    async def subscriptions(self, task_small_id: int) -> list[Subscription]: ...

    @abstractmethod
    async def usdc_coins(self, address: str) -> list[Coin]: ...

    async def usdc_balance(self, address: str) -> int:
        return sum(c.balance for c in await self.usdc_coins(address))

    async def gas_balance(self, address: str) -> int | None:
        """SUI (in MIST) the address holds to pay gas; ``None`` where the chain charges no gas (the localnet)."""
        return None

    @abstractmethod
    async def badges(self, address: str) -> list[Badge]: ...

    @abstractmethod
    async def events(self, cursor: EventId | None = None, limit: int = 50) -> EventPage: ...

    @abstractmethod
    async def get_transaction(self, digest: str) -> TxResult | None: ...

    # ------------------------------------------------------------------ writes
    @abstractmethod
    async def prepare(self, sender: str, function: str, args: dict[str, Any]) -> PreparedTransaction:
        """Resolve badges and coins, check every argument against its Move type, return the bytes to sign."""

    @abstractmethod
    def sign(self, prepared: PreparedTransaction) -> str:
        """Sign with the sender's key from the wallet (Sui serialized signature, base64)."""

    @abstractmethod
    async def execute(self, prepared: PreparedTransaction, signature: str) -> TxResult:
        """Submit signed bytes. Identical bytes submitted again return the first effects.

        Raises:
            MoveAbort, MoveArithmeticError: the call failed on chain and changed nothing.
            TransactionRejected: refused before execution.
        """

    async def call(self, sender: str, function: str, **args: Any) -> TxResult:
        prepared = await self.prepare(sender, function, args)
        return await self.execute(prepared, self.sign(prepared))

    async def close(self) -> None:  # noqa: B027 - optional hook
        pass

    # ------------------------------------------------------------------ entry functions (atoma-protocol.md §4)
    async def register_node_entry(self, sender: str) -> TxResult:
        return await self.call(sender, "register_node_entry")

    async def create_task_entry(
        self,
        sender: str,
        *,
        role: int,
        model_name: str | None = None,
        security_level: int | None = None,
        minimum_reputation_score: int | None = None,
        is_public: bool = True,
        badge: str | None = None,
    ) -> TxResult:
        return await self.call(
            sender,
            "create_task_entry",
            badge=badge,
            role=role,
            model_name=model_name,
            security_level=security_level,
            minimum_reputation_score=minimum_reputation_score,
            is_public=is_public,
        )

    async def deprecate_task(self, sender: str, *, task_small_id: int | None = None, task_badge: str | None = None) -> TxResult:
        return await self.call(sender, "deprecate_task", task_badge=task_badge, task_small_id=task_small_id)

    async def remove_deprecated_task(
        self, sender: str, *, task_small_id: int | None = None, task_badge: str | None = None
    ) -> TxResult:
        return await self.call(sender, "remove_deprecated_task", task_badge=task_badge, task_small_id=task_small_id)

    async def remove_deprecated_task_by_admin(self, sender: str, *, task_small_id: int, badge: str | None = None) -> TxResult:
        return await self.call(sender, "remove_deprecated_task_by_admin", badge=badge, task_small_id=task_small_id)

    async def whitelist_nodes_for_task(
        self, sender: str, *, task_small_id: int, nodes: Sequence[int], badge: str | None = None
    ) -> TxResult:
        return await self.call(sender, "whitelist_nodes_for_task", badge=badge, task_small_id=task_small_id, nodes=list(nodes))

    async def subscribe_node_to_task(
        self, sender: str, *, task_small_id: int, price_per_one_million_compute_units: int, **badge: Any
    ) -> TxResult:
        return await self.call(
            sender,
            "subscribe_node_to_task",
            task_small_id=task_small_id,
            price_per_one_million_compute_units=price_per_one_million_compute_units,
            **badge,
        )

    async def update_node_subscription(
        self, sender: str, *, task_small_id: int, price_per_one_million_compute_units: int, **badge: Any
    ) -> TxResult:
        return await self.call(
            sender,
            "update_node_subscription",
            task_small_id=task_small_id,
            price_per_one_million_compute_units=price_per_one_million_compute_units,
            **badge,
        )

    async def unsubscribe_node_from_task(self, sender: str, *, task_small_id: int, **badge: Any) -> TxResult:
        return await self.call(sender, "unsubscribe_node_from_task", task_small_id=task_small_id, **badge)

    async def acquire_new_stack_entry(
        self, sender: str, *, task_small_id: int, num_compute_units: int, price: int, wallet: str | None = None
    ) -> TxResult:
        return await self.call(
            sender,
            "acquire_new_stack_entry",
            wallet=wallet,
            task_small_id=task_small_id,
            num_compute_units=num_compute_units,
            price=price,
        )

    async def try_settle_stack(
        self,
        sender: str,
        *,
        stack_small_id: int,
        num_claimed_compute_units: int,
        committed_stack_proof: bytes,
        stack_merkle_leaf: bytes,
        **badge: Any,
    ) -> TxResult:
        return await self.call(
            sender,
            "try_settle_stack",
            stack_small_id=stack_small_id,
            num_claimed_compute_units=num_claimed_compute_units,
            committed_stack_proof=committed_stack_proof,
            stack_merkle_leaf=stack_merkle_leaf,
            **badge,
        )

    async def submit_stack_settlement_attestation(
        self, sender: str, *, stack_small_id: int, committed_stack_proof: bytes, stack_merkle_leaf: bytes, **badge: Any
    ) -> TxResult:
        return await self.call(
            sender,
            "submit_stack_settlement_attestation",
            stack_small_id=stack_small_id,
            committed_stack_proof=committed_stack_proof,
            stack_merkle_leaf=stack_merkle_leaf,
            **badge,
        )

    async def start_attestation_dispute(
        self, sender: str, *, stack_small_id: int, attestation_commitment: bytes, **badge: Any
    ) -> TxResult:
        return await self.call(
            sender,
            "start_attestation_dispute",
            stack_small_id=stack_small_id,
            attestation_commitment=attestation_commitment,
            **badge,
        )

    async def claim_funds(self, sender: str, *, settled_ticket_ids: Sequence[int], **badge: Any) -> TxResult:
        return await self.call(sender, "claim_funds", settled_ticket_ids=list(settled_ticket_ids), **badge)

    async def claim_funds_for_stacks(
        self,
        sender: str,
        *,
        stack_small_ids: Sequence[int],
        num_compute_units_per_stack_to_claim: Sequence[int],
        **badge: Any,
    ) -> TxResult:
        return await self.call(
            sender,
            "claim_funds_for_stacks",
            stack_small_ids=list(stack_small_ids),
            num_compute_units_per_stack_to_claim=list(num_compute_units_per_stack_to_claim),
            **badge,
        )

    async def withdraw_fees(self, sender: str, **badge: Any) -> TxResult:
        return await self.call(sender, "withdraw_fees", **badge)

    async def permanently_disable_node(self, sender: str, **badge: Any) -> TxResult:
        return await self.call(sender, "permanently_disable_node", **badge)

    async def destroy_disabled_node(self, sender: str, **badge: Any) -> TxResult:
        return await self.call(sender, "destroy_disabled_node", **badge)

    async def admin_set(self, sender: str, setter: str, value: int | None = None, *, badge: str | None = None) -> TxResult:
        """Any admin setter of §4.18 (``disable_registration``/``enable_registration`` take no value)."""
        args: dict[str, Any] = {"badge": badge}
        if value is not None:
            args["value"] = value
        return await self.call(sender, setter, **args)
