"""Epoch predicates of atoma::db (atoma-protocol.md §3), each at its boundary."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from atoma_ops.protocol import constants, epochs

E = 7  # any epoch; the rules are offsets from it


def test_constants():
    assert constants.STACK_DISPUTE_SETTLEMENT_DELAY == 1
    assert constants.TASK_REMOVAL_DELAY_BY_BADGE == 1
    assert constants.TASK_REMOVAL_DELAY_BY_ADMIN == 2
    assert constants.NODE_DESTROY_DELAY == 4


@pytest.mark.parametrize("e", [0, 1, E, 10**12])
def test_ticket_dispute_settled_at_epoch_is_settle_epoch_plus_one(e):
    assert epochs.dispute_settled_at_epoch(e) == e + 1


@pytest.mark.parametrize(
    "current, open_",
    [(E - 1, True), (E, True), (E + 1, True), (E + 2, False), (E + 10, False)],
)
def test_attestation_window_is_epochs_E_and_E_plus_1(current, open_):
    """Attestations accepted while dispute_settled_at_epoch (E+1) >= current epoch."""
    assert epochs.attestation_window_open(epochs.dispute_settled_at_epoch(E), current) is open_


@pytest.mark.parametrize("current, ok", [(E, False), (E + 1, True), (E + 2, True), (E + 100, True)])
def test_claim_allowed_from_E_plus_1(current, ok):
    assert epochs.claimable(epochs.dispute_settled_at_epoch(E), current) is ok


def test_attestation_and_claim_overlap_only_in_E_plus_1():
    settled = epochs.dispute_settled_at_epoch(E)
    both = [c for c in range(E, E + 5) if epochs.attestation_window_open(settled, c) and epochs.claimable(settled, c)]
    assert both == [E + 1]


@pytest.mark.parametrize("current, ok", [(E - 1, False), (E, False), (E + 1, True), (E + 2, True)])
def test_task_removal_by_badge_needs_one_epoch(current, ok):
    assert epochs.task_removable_by_badge(E, current) is ok


@pytest.mark.parametrize("current, ok", [(E, False), (E + 1, False), (E + 2, True), (E + 3, True)])
def test_task_removal_by_admin_needs_two_epochs(current, ok):
    assert epochs.task_removable_by_admin(E, current) is ok


@pytest.mark.parametrize(
    "current, ok", [(E, False), (E + 1, False), (E + 2, False), (E + 3, False), (E + 4, True), (E + 5, True)]
)
def test_node_destroy_needs_four_epochs(current, ok):
    assert epochs.node_destroyable(E, current) is ok


@given(st.integers(0, 10**15), st.integers(0, 10**15))
def test_predicates_are_plain_integer_comparisons(base, current):
    assert epochs.task_removable_by_badge(base, current) == (current >= base + 1)
    assert epochs.task_removable_by_admin(base, current) == (current >= base + 2)
    assert epochs.node_destroyable(base, current) == (base + 4 <= current)
    assert epochs.attestation_window_open(base + 1, current) == (base + 1 >= current)
    assert epochs.claimable(base + 1, current) == (current >= base + 1)
