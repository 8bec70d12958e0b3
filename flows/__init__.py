"""Prefect flows: one per lifecycle stage, the whole lifecycle, and the scheduled runs of an ops team."""

from .attestation import attestation_watch
from .ledger_sync import ledger_sync
from .lifecycle import stack_lifecycle
from .settlement import settlement_run
from .stages import (
    attest,
    buy_stack,
    claim,
    create_task,
    mint_usdc,
    register_and_subscribe_node,
    serve_stack,
    try_settle,
    wait_for_dispute_window,
)

__all__ = [
    "attest",
    "attestation_watch",
    "buy_stack",
    "claim",
    "create_task",
    "ledger_sync",
    "mint_usdc",
    "register_and_subscribe_node",
    "serve_stack",
    "settlement_run",
    "stack_lifecycle",
    "try_settle",
    "wait_for_dispute_window",
]
