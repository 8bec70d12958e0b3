"""Epoch predicates of ``atoma::db`` (atoma-protocol.md §3); all comparisons are on integer epochs."""

from .constants import (
    NODE_DESTROY_DELAY,
    STACK_DISPUTE_SETTLEMENT_DELAY,
    TASK_REMOVAL_DELAY_BY_ADMIN,
    TASK_REMOVAL_DELAY_BY_BADGE,
    U64_MAX,
)

# Sui's epoch is a u64, but every store that records one here (the localnet's SQLite, the node stores, the ledger's
# DuckDB) holds a signed 64-bit integer, and the contract adds up to NODE_DESTROY_DELAY to an epoch it stores: no
# epoch may pass this, so every epoch the contract computes still fits. (Sui itself is near epoch 1,000.)
MAX_EPOCH = 2**63 - 1 - max(NODE_DESTROY_DELAY, STACK_DISPUTE_SETTLEMENT_DELAY, TASK_REMOVAL_DELAY_BY_ADMIN,
                            TASK_REMOVAL_DELAY_BY_BADGE)
# The localnet's epoch length and random seed: what its clock and SQLite can hold.
MAX_EPOCH_DURATION_MS = 2**63 - 1
MAX_SEED = U64_MAX


def check_epoch_advance(current: int, count: int) -> int:
    """The epoch after advancing ``count`` epochs from ``current``; ValueError when ``count`` is < 1 or the result
    would pass MAX_EPOCH."""
    if count < 1:
        raise ValueError("count must be >= 1")
    if count > MAX_EPOCH - current:
        raise ValueError(f"advancing {count} epochs from epoch {current} passes the last epoch {MAX_EPOCH}")
    return current + count


def dispute_settled_at_epoch(try_settle_epoch: int) -> int:
    """A ticket created in epoch E has ``dispute_settled_at_epoch = E + 1``."""
    return try_settle_epoch + STACK_DISPUTE_SETTLEMENT_DELAY


def attestation_window_open(dispute_settled_at: int, current_epoch: int) -> bool:
    """Attestations are accepted while ``dispute_settled_at_epoch >= current_epoch`` (epochs E and E+1)."""
    return dispute_settled_at >= current_epoch


def claimable(dispute_settled_at: int, current_epoch: int) -> bool:
    """``claim_funds`` is allowed from epoch E+1 on."""
    return current_epoch >= dispute_settled_at


def task_removable_by_badge(deprecated_at_epoch: int, current_epoch: int) -> bool:
    return current_epoch >= deprecated_at_epoch + TASK_REMOVAL_DELAY_BY_BADGE


def task_removable_by_admin(deprecated_at_epoch: int, current_epoch: int) -> bool:
    return current_epoch >= deprecated_at_epoch + TASK_REMOVAL_DELAY_BY_ADMIN


def node_destroyable(was_disabled_in_epoch: int, current_epoch: int) -> bool:
    return was_disabled_in_epoch + NODE_DESTROY_DELAY <= current_epoch
