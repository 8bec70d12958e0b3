"""USDC money math of ``atoma::db`` (atoma-protocol.md §4.9, §4.13, §4.14, §6).

Every division is Move's u64 floor division; every product must fit in a u64 or the transaction fails with an
ArithmeticError. Amounts are USDC base units (6 decimals).
"""

from __future__ import annotations

from decimal import Decimal

from .constants import ONE_MILLION_COMPUTE_UNITS, ONE_USDC, PERMILLE, U64_MAX, SecurityLevel


class U64Overflow(ArithmeticError):
    """A u64 operation overflowed: Sui reports this as an execution ``ArithmeticError`` (no abort code)."""


def u64(value: int) -> int:
    """Check that an intermediate result fits a Move u64, as the Move VM does after every operation."""
    if value < 0 or value > U64_MAX:
        raise U64Overflow(f"u64 overflow: {value}")
    return value


def mul(*factors: int) -> int:
    """Move u64 multiplication, left to right, checked at every step."""
    result = 1
    for f in factors:
        result = u64(result * f)
    return result


def stack_total_cost(price_per_one_million_compute_units: int, num_compute_units: int) -> int:
    """``floor(price × units / 1e6)``: the base price of a stack."""
    return mul(price_per_one_million_compute_units, num_compute_units) // ONE_MILLION_COMPUTE_UNITS


def stack_payment(
    security_level: int,
    price_per_one_million_compute_units: int,
    num_compute_units: int,
    sampling_consensus_charge_permille: int,
    cross_validation_extra_nodes_charge_permille: int,
) -> int:
    """What the buyer pays at ``acquire_new_stack_entry`` (the ``fee_amount`` split from its coin)."""
    total_cost = stack_total_cost(price_per_one_million_compute_units, num_compute_units)
    if security_level == SecurityLevel.SAMPLING_CONSENSUS:
        permille = u64(sampling_consensus_charge_permille + cross_validation_extra_nodes_charge_permille)
        return mul(total_cost, permille) // PERMILLE
    return total_cost


def stack_fee_amount(
    security_level: int,
    price_per_one_million_compute_units: int,
    num_compute_units: int,
    sampling_consensus_charge_permille: int,
) -> int:
    """``calculate_stack_fee_amount``: node fee for claimed units, or the refund for unclaimed ones."""
    if security_level == SecurityLevel.SAMPLING_CONSENSUS:
        return (
            mul(num_compute_units, price_per_one_million_compute_units, sampling_consensus_charge_permille)
            // (ONE_MILLION_COMPUTE_UNITS * PERMILLE)
        )
    return mul(num_compute_units, price_per_one_million_compute_units) // ONE_MILLION_COMPUTE_UNITS


def confidential_claim_amount(price_per_one_million_compute_units: int, num_compute_units: int) -> int:
    """``claim_funds_for_stacks``: ``floor(units × price / 1e6)`` whatever the security level."""
    return mul(num_compute_units, price_per_one_million_compute_units) // ONE_MILLION_COMPUTE_UNITS


def attester_credit(node_fee: int, cross_validation_extra_nodes_count: int) -> int:
    """What each attester that attested is credited at claim: ``node_fee / extra_nodes_count``."""
    return node_fee // cross_validation_extra_nodes_count


def slash_on_timeout(collateral: int, permille_to_slash_node_on_timeout: int) -> int:
    """``ceil(collateral × permille / 1000)`` taken from a node that failed to attest."""
    product = mul(collateral, permille_to_slash_node_on_timeout)
    return (product + PERMILLE - 1) // PERMILLE


def format_usdc(base_units: int) -> str:
    """``12500000`` -> ``"12.500000"`` (6 decimals, exact)."""
    sign = "-" if base_units < 0 else ""
    whole, frac = divmod(abs(base_units), ONE_USDC)
    return f"{sign}{whole}.{frac:06d}"


def parse_usdc(text: str) -> int:
    """``"12.5"`` -> ``12500000``; refuses more than 6 decimals instead of rounding."""
    d = Decimal(text)
    units = d * ONE_USDC
    if units != units.to_integral_value():
        raise ValueError(f"{text!r} has more than 6 decimals")
    return int(units)
