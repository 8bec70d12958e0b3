"""``atoma-ops db …`` writes: the atoma::db entry functions, one command each (flags = Move parameter names in
kebab case); the reads are in ``db_reads.py``, on the same group."""

from __future__ import annotations

from typing import TYPE_CHECKING, Awaitable, List, Optional

import typer

from ..protocol import abi
from .core import sub_app
from .inputs import (
    MANAGER_BADGE_OPT, NODE_BADGE_OPT, NODE_SMALL_ID_OPT, kebab, node_badge_pick, object_id, parse_hex, parse_ints,
    task_badge_pick,
)
from .session import Session, tx_command

if TYPE_CHECKING:  # pragma: no cover
    from ..chain.types import TxResult

db_app = sub_app("The atoma::db entry functions and reads (flags = Move parameter names in kebab case).")


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
    is_public: bool = typer.Option(
        False, "--is-public/--is-private",
        help="Any node may subscribe; without it the task is private (whitelisted nodes only), as with the Atoma CLI.",
    ),
    badge: Optional[str] = MANAGER_BADGE_OPT,
) -> None:
    """Create a task (admin: needs the AtomaManagerBadge)."""
    tx_command(
        ctx,
        "db::create_task_entry",
        lambda s: s.chain.create_task_entry(
            s.sender,
            role=role,
            model_name=model_name,
            security_level=security_level,
            minimum_reputation_score=minimum_reputation_score,
            is_public=is_public,
            badge=object_id("--badge", badge),
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
        return s.chain.deprecate_task(s.sender, **task_badge_pick(task_badge, task_small_id))

    tx_command(ctx, "db::deprecate_task", call)


@db_app.command("remove-deprecated-task")
def db_remove_deprecated_task(
    ctx: typer.Context, task_badge: Optional[str] = TASK_BADGE_OPT, task_small_id: Optional[int] = TASK_SMALL_ID_PICK_OPT
) -> None:
    """Remove a task deprecated at least one epoch ago (consumes its TaskBadge)."""

    def call(s: Session) -> Awaitable["TxResult"]:
        return s.chain.remove_deprecated_task(s.sender, **task_badge_pick(task_badge, task_small_id))

    tx_command(ctx, "db::remove_deprecated_task", call)


@db_app.command("remove-deprecated-task-by-admin")
def db_remove_deprecated_task_by_admin(
    ctx: typer.Context,
    task_small_id: int = typer.Option(..., "--task-small-id", metavar="N"),
    badge: Optional[str] = MANAGER_BADGE_OPT,
) -> None:
    """Remove a task deprecated at least two epochs ago (admin)."""
    tx_command(
        ctx,
        "db::remove_deprecated_task_by_admin",
        lambda s: s.chain.remove_deprecated_task_by_admin(
            s.sender, task_small_id=task_small_id, badge=object_id("--badge", badge)
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
            nodes=parse_ints("--nodes-small-ids", nodes),
            badge=object_id("--badge", badge),
        )

    tx_command(ctx, "db::whitelist_nodes_for_task", call)


@db_app.command("register-node")
def db_register_node(ctx: typer.Context) -> None:
    """Register the signer as a node (a NodeBadge is sent to it)."""
    tx_command(ctx, "db::register_node_entry", lambda s: s.chain.register_node_entry(s.sender))


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
            **node_badge_pick(node_badge, node_small_id),
        )

    tx_command(ctx, "db::subscribe_node_to_task", call)


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
            **node_badge_pick(node_badge, node_small_id),
        )

    tx_command(ctx, "db::update_node_subscription", call)


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
            s.sender, task_small_id=task_small_id, **node_badge_pick(node_badge, node_small_id)
        )

    tx_command(ctx, "db::unsubscribe_node_from_task", call)


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
    tx_command(
        ctx,
        "db::acquire_new_stack_entry",
        lambda s: s.chain.acquire_new_stack_entry(
            s.sender,
            task_small_id=task_small_id,
            num_compute_units=num_compute_units,
            price=price,
            wallet=object_id("--wallet", wallet),
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
            committed_stack_proof=parse_hex("--committed-stack-proof", committed_stack_proof),
            stack_merkle_leaf=parse_hex("--stack-merkle-leaf", stack_merkle_leaf),
            **node_badge_pick(node_badge, node_small_id),
        )

    tx_command(ctx, "db::try_settle_stack", call)


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
            committed_stack_proof=parse_hex("--committed-stack-proof", committed_stack_proof),
            stack_merkle_leaf=parse_hex("--stack-merkle-leaf", stack_merkle_leaf),
            **node_badge_pick(node_badge, node_small_id),
        )

    tx_command(ctx, "db::submit_stack_settlement_attestation", call)


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
            attestation_commitment=parse_hex("--attestation-commitment", attestation_commitment),
            **node_badge_pick(node_badge, node_small_id),
        )

    tx_command(ctx, "db::start_attestation_dispute", call)


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
            settled_ticket_ids=parse_ints("--settled-ticket-ids", settled_ticket_ids),
            **node_badge_pick(node_badge, node_small_id),
        )

    tx_command(ctx, "db::claim_funds", call)


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
            stack_small_ids=parse_ints("--stack-small-ids", stack_small_ids),
            num_compute_units_per_stack_to_claim=parse_ints(
                "--num-compute-units-per-stack-to-claim", num_compute_units_per_stack_to_claim
            ),
            **node_badge_pick(node_badge, node_small_id),
        )

    tx_command(ctx, "db::claim_funds_for_stacks", call)


def _node_only_command(name: str, function: str, doc: str) -> None:
    def command(
        ctx: typer.Context, node_badge: Optional[str] = NODE_BADGE_OPT, node_small_id: Optional[int] = NODE_SMALL_ID_OPT
    ) -> None:
        def call(s: Session) -> Awaitable["TxResult"]:
            return getattr(s.chain, function)(s.sender, **node_badge_pick(node_badge, node_small_id))

        tx_command(ctx, f"db::{function}", call)

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
            tx_command(
                ctx, title, lambda s: s.chain.admin_set(s.sender, setter, value, badge=object_id("--badge", badge))
            )

    else:

        def command(ctx: typer.Context, badge: Optional[str] = MANAGER_BADGE_OPT) -> None:  # type: ignore[misc]
            tx_command(ctx, title, lambda s: s.chain.admin_set(s.sender, setter, badge=object_id("--badge", badge)))

    command.__doc__ = f"Admin setter {setter} (needs the AtomaManagerBadge)."
    command.__name__ = f"db_{setter}"
    db_app.command(kebab(setter))(command)


for _setter in abi.ADMIN_SETTERS:
    _admin_setter_command(_setter)

