"""Prefect tasks: thin wrappers over ``atoma_ops.lifecycle``. One task per chain write (or one batch of the same
write), one per batch of serving or replay work — never one per request."""

from .chain import buy_stack, create_task, mint_usdc, register_node, set_cross_validation, subscribe_node, wait_for_epoch
from .ledger import earnings_table, sync_ledger
from .node import (
    attest_stack,
    claim_confidential,
    claim_tickets,
    find_attestation_requests,
    plan_claims,
    replay_stack,
    serve_batch,
    settle_candidates,
    try_settle_stacks,
)

__all__ = [
    "attest_stack",
    "buy_stack",
    "claim_confidential",
    "claim_tickets",
    "create_task",
    "earnings_table",
    "find_attestation_requests",
    "mint_usdc",
    "plan_claims",
    "register_node",
    "replay_stack",
    "serve_batch",
    "set_cross_validation",
    "settle_candidates",
    "subscribe_node",
    "sync_ledger",
    "try_settle_stacks",
    "wait_for_epoch",
]
