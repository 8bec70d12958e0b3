"""Prefect flows: one per lifecycle stage, the whole lifecycle, and the scheduled runs of an ops team."""

from ._ephemeral import patient_ephemeral_api

patient_ephemeral_api()  # before the first flow run of any entry point (demo, benchmarks, a script) starts the API

from .attestation import attestation_watch  # noqa: E402
from .balance_watch import balance_watch  # noqa: E402
from .ledger_sync import ledger_sync  # noqa: E402
from .lifecycle import stack_lifecycle  # noqa: E402
from .settlement import settlement_run  # noqa: E402
from .stages import (  # noqa: E402
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
    "balance_watch",
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
