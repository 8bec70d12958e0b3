"""Money math of atoma::db (atoma-protocol.md §4.9, §4.13, §4.14, §6): tables to the base unit."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from atoma_ops.protocol import money
from atoma_ops.protocol.constants import ONE_USDC, U64_MAX
from atoma_ops.protocol.money import U64Overflow

NO, CC, SC = 0, 1, 2  # security levels (constants win over the struct comment, §1)
SCP, XNP = 1200, 12  # sampling_consensus_charge_permille, cross_validation_extra_nodes_charge_permille (defaults)


def test_one_usdc_is_six_decimals():
    assert ONE_USDC == 1_000_000


# ---------------------------------------------------------------- payment at acquire_new_stack_entry (§4.9 step 4)
@pytest.mark.parametrize(
    "level, price, units, paid",
    [
        (NO, 1_000_000, 1_000_000, 1_000_000),  # §6 ex. 1: 1 USDC per 1M units
        (CC, 1_000_000, 1_000_000, 1_000_000),  # ConfidentialCompute pays the same as NoSecurity
        (SC, 1_000_000, 1_000_000, 1_212_000),  # §6 ex. 4: 121.2 %
        (NO, 1_000, 100, 0),  # §6 ex. 2: floor(100_000 / 1e6) = 0, the stack is free
        (SC, 1_000, 100, 0),  # free for SamplingConsensus too (0 × 1212 / 1000)
        (NO, 3, 333_333, 0),  # §6 ex. 3: floor(0.999999) = 0
        (NO, 3, 333_334, 1),  # floor(1.000002) = 1
        (NO, 1_000_000, 400_000, 400_000),
        (NO, 2_500_000, 1_000_000, 2_500_000),
        (SC, 1, 1_000_000, 1),  # total_cost 1 ⇒ floor(1212 / 1000) = 1
        (SC, 999, 1_000_000, 1_210),  # total_cost 999 ⇒ floor(999 × 1212 / 1000) = floor(1210.788)
        (SC, 10, 1_000_000, 12),  # floor(12.12)
        (NO, 7, 999_999, 6),  # floor(6.999993)
    ],
)
def test_stack_payment(level, price, units, paid):
    assert money.stack_payment(level, price, units, SCP, XNP) == paid


@pytest.mark.parametrize(
    "price, units, total",
    [(1_000_000, 1_000_000, 1_000_000), (1_000, 100, 0), (3, 333_333, 0), (1, 1_000_000, 1), (1_500_000, 1, 1)],
)
def test_stack_total_cost(price, units, total):
    assert money.stack_total_cost(price, units) == total


def test_sampling_consensus_payment_follows_the_configured_permilles():
    # total_cost 1_000_000 × (1000 + 0) / 1000
    assert money.stack_payment(SC, 1_000_000, 1_000_000, 1000, 0) == 1_000_000
    assert money.stack_payment(SC, 1_000_000, 1_000_000, 2000, 500) == 2_500_000
    # the permilles only matter for SamplingConsensus
    assert money.stack_payment(NO, 1_000_000, 1_000_000, 2000, 500) == 1_000_000


# ---------------------------------------------------------------- calculate_stack_fee_amount (§4.13)
@pytest.mark.parametrize(
    "level, price, units, amount",
    [
        (NO, 1_000_000, 400_000, 400_000),  # §6 ex. 1 node fee
        (NO, 1_000_000, 600_000, 600_000),  # §6 ex. 1 refund
        (CC, 1_000_000, 400_000, 400_000),
        (SC, 1_000_000, 500_000, 600_000),  # §6 ex. 4: floor(5e5 × 1e6 × 1200 / 1e9)
        (SC, 1_000_000, 1_000_000, 1_200_000),
        (SC, 1_000_000, 0, 0),
        (NO, 3, 111_111, 0),  # §6 ex. 3 node fee
        (NO, 3, 222_222, 0),  # §6 ex. 3 refund
        (NO, 1_000, 100, 0),  # §6 ex. 2
        (SC, 1, 833_333, 0),  # floor(0.9999996)
        (SC, 1, 833_334, 1),  # floor(1.0000008)
        (SC, 7, 123_457, 1),  # floor(123457 × 7 × 1200 / 1e9) = floor(1.0370388)
    ],
)
def test_stack_fee_amount(level, price, units, amount):
    assert money.stack_fee_amount(level, price, units, SCP) == amount


def test_sampling_consensus_worked_example_4():
    """§6 ex. 4: pays 1_212_000; claim 500_000 ⇒ node 600_000, refund 600_000, one attester credited 600_000."""
    paid = money.stack_payment(SC, 1_000_000, 1_000_000, SCP, XNP)
    node_fee = money.stack_fee_amount(SC, 1_000_000, 500_000, SCP)
    refund = money.stack_fee_amount(SC, 1_000_000, 1_000_000 - 500_000, SCP)
    credit = money.attester_credit(node_fee, 1)
    assert (paid, node_fee, refund, credit) == (1_212_000, 600_000, 600_000, 600_000)
    assert node_fee + refund + credit == 1_800_000 > paid  # payouts exceed the payment (quirk §14.10)


@pytest.mark.parametrize(
    "price, units, amount",
    [(1_000_000, 400_000, 400_000), (1_000_000, 600_000, 600_000), (3, 333_333, 0), (1_000, 100, 0), (0, 5, 0)],
)
def test_confidential_claim_amount(price, units, amount):
    assert money.confidential_claim_amount(price, units) == amount


@pytest.mark.parametrize(
    "node_fee, count, credit",
    [(600_000, 1, 600_000), (600_000, 2, 300_000), (600_001, 2, 300_000), (1, 2, 0), (0, 1, 0)],
)
def test_attester_credit(node_fee, count, credit):
    assert money.attester_credit(node_fee, count) == credit


@pytest.mark.parametrize(
    "collateral, permille, slashed",
    [(0, 100, 0), (1, 100, 1), (10, 100, 1), (11, 100, 2), (1_000, 100, 100), (1_001, 100, 101), (500, 1000, 500), (500, 0, 0)],
)
def test_slash_on_timeout_is_a_ceiling(collateral, permille, slashed):
    assert money.slash_on_timeout(collateral, permille) == slashed


@given(
    level=st.sampled_from([NO, CC, SC]),
    price=st.integers(1, 10**9),
    units=st.integers(1, 1_000_000),
    claimed_fraction=st.floats(0, 1),
)
def test_node_fee_plus_refund_never_exceeds_base_fee(level, price, units, claimed_fraction):
    """Floors are taken separately, so fee + refund <= the fee on all units; dust stays in the treasury (§6)."""
    claimed = int(units * claimed_fraction)
    fee = money.stack_fee_amount(level, price, claimed, SCP)
    refund = money.stack_fee_amount(level, price, units - claimed, SCP)
    assert fee + refund <= money.stack_fee_amount(level, price, units, SCP)
    if level != SC:
        assert fee + refund <= money.stack_payment(level, price, units, SCP, XNP)


# ---------------------------------------------------------------- u64 overflow ⇒ ArithmeticError (§1.1, §6 ex. 5)
def test_u64_bounds():
    assert money.u64(0) == 0
    assert money.u64(U64_MAX) == U64_MAX
    with pytest.raises(U64Overflow):
        money.u64(U64_MAX + 1)
    with pytest.raises(U64Overflow):
        money.u64(-1)


def test_overflow_is_an_arithmetic_error():
    assert issubclass(U64Overflow, ArithmeticError)


@pytest.mark.parametrize(
    "price, units, overflows",
    [
        (2**32, 2**32, True),  # exactly 2^64
        (2**63, 2, True),
        (U64_MAX, 2, True),
        (U64_MAX // 3 + 1, 3, True),
        (U64_MAX // 3, 3, False),  # 3 divides 2^64 - 1: the product is exactly U64_MAX
        (U64_MAX, 1, False),
        (2**32 - 1, 2**32 + 1, False),  # 2^64 - 1
    ],
)
def test_price_times_units_overflow(price, units, overflows):
    fns = [
        lambda: money.stack_total_cost(price, units),
        lambda: money.stack_payment(NO, price, units, SCP, XNP),
        lambda: money.stack_fee_amount(NO, price, units, SCP),
        lambda: money.confidential_claim_amount(price, units),
    ]
    for fn in fns:
        if overflows:
            with pytest.raises(U64Overflow):
                fn()
        else:
            assert fn() == price * units // 1_000_000


def test_sampling_consensus_claim_overflows_on_the_extra_permille_factor():
    """units × price fits a u64, units × price × 1200 does not (§6 ex. 5)."""
    price, units = 20_000_000_000, 1_000_000  # 2e16 < 2^64 < 2.4e19
    assert money.stack_fee_amount(NO, price, units, SCP) == 20_000_000_000
    assert money.stack_payment(SC, price, units, SCP, XNP) == 24_240_000_000
    with pytest.raises(U64Overflow):
        money.stack_fee_amount(SC, price, units, SCP)


def test_mul_checks_every_step():
    assert money.mul(2, 3, 7) == 42
    assert money.mul() == 1
    with pytest.raises(U64Overflow):
        money.mul(2**40, 2**40, 0)  # overflows before the zero factor, as Move evaluates left to right


# ---------------------------------------------------------------- format / parse
@pytest.mark.parametrize(
    "units, text",
    [
        (0, "0.000000"),
        (1, "0.000001"),
        (999_999, "0.999999"),
        (1_000_000, "1.000000"),
        (1_212_000, "1.212000"),
        (12_500_000, "12.500000"),
        (1_000_000_000, "1000.000000"),
        (U64_MAX, "18446744073709.551615"),
        (-1, "-0.000001"),
        (-12_500_000, "-12.500000"),
    ],
)
def test_format_usdc(units, text):
    assert money.format_usdc(units) == text


@pytest.mark.parametrize(
    "text, units",
    [
        ("12.5", 12_500_000),
        ("1", 1_000_000),
        ("0", 0),
        ("0.000001", 1),
        ("1.212", 1_212_000),
        ("1.212000", 1_212_000),
        ("1000", 1_000_000_000),
        ("18446744073709.551615", U64_MAX),
        ("1e-6", 1),
    ],
)
def test_parse_usdc(text, units):
    assert money.parse_usdc(text) == units


@pytest.mark.parametrize("text", ["1.0000001", "0.0000005", "12.3456789"])
def test_parse_usdc_refuses_more_than_six_decimals(text):
    with pytest.raises(ValueError):
        money.parse_usdc(text)


@given(st.integers(-(2**70), 2**70))
def test_format_parse_roundtrip(units):
    assert money.parse_usdc(money.format_usdc(units)) == units
