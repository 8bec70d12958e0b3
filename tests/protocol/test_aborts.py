"""Abort codes of atoma::db and the framework aborts (atoma-protocol.md §1.1), transcribed from the spec table."""

from __future__ import annotations

import pytest

from atoma_ops.chain.errors import MoveAbort, abort_from_json, MoveArithmeticError
from atoma_ops.protocol import aborts

# §1.1, verbatim.
SPEC_TABLE = {
    312012000: "ENodeRegDisabled",
    312012001: "EModelDisabled",
    312012002: "ENotAuthorized",
    312012003: "EProtocolFeeCannotBeZero",
    312012004: "ERelativePerformanceCannotBeZero",
    312012005: "EEchelonNotFound",
    312012006: "EEchelonAlreadyExistsForModel",
    312012007: "ETotalPermilleMustBeLessThan1000",
    312012009: "ENodeAlreadySubscribedToModel",
    312012010: "ENodeNotSubscribedToModel",
    312012011: "ENodeIndexMismatch",
    312012012: "ENodeAlreadyDisabled",
    312012013: "ENodeMustWaitBeforeDestroy",
    312012014: "ECannotSampleZeroNodes",
    312012015: "ETaskDeprecated",
    312012016: "ENodeAlreadySubscribedToTask",
    312012017: "ETaskNotFound",
    312012018: "ENodeNotSubscribedToTask",
    312012019: "ENotEnoughEpochsPassed",
    312012020: "ETaskNotDeprecated",
    312012021: "ENoNodesSubscribedToTask",
    312012022: "ENoNodesEligibleForTask",
    312012023: "ENodeNotSelectedForStack",
    312012024: "EStackInSettlementDispute",
    312012025: "ETooManyComputedUnits",
    312012026: "EStackDoesNotRequireSamplingConsensus",
    312012027: "EStackNotFound",
    312012028: "EStackNotInSettlementDispute",
    312012029: "EStackDisputePeriodOver",
    312012030: "ENodeNotSelectedForAttestation",
    312012031: "EStackInDispute",
    312012032: "EStackDisputePeriodIsNotOver",
    312012033: "ENodeNotSelectedForSettlement",
    312012034: "ETaskAlreadyDeprecated",
    312012035: "EInvalidTaskRole",
    312012036: "EInvalidSecurityLevel",
    312012037: "EInvalidPricePerComputeUnit",
    312012038: "ENodeDoesNotMeetTaskRequirements",
    312012039: "EInvalidComputeUnits",
    312012040: "EInsufficientBalance",
    312012041: "EInvalidCommittedStackProof",
    312012042: "EInvalidStackMerkleLeaf",
    312012043: "EInvalidMinimumReputationScore",
    312012044: "ETaskIsPublic",
    312012045: "ENodeNotWhitelistedForTask",
    312012046: "EStackAlreadyInDispute",
    312012047: "ETaskSecurityLevelNotSamplingConsensus",
    312012048: "EInvalidDeviceType",
    312012049: "EInvalidKeyRotationCounter",
    312012050: "EPublicKeyCommitmentMismatch",
    312012051: "ETaskIsNotConfidentialCompute",
    312012052: "EInvalidNumClaimedComputeUnitsPerStack",
    312012053: "EStackAlreadyClaimed",
    312012054: "ENodeNotSelectedForClaim",
}


def test_ebase():
    assert aborts.EBASE == 312_012_000


@pytest.mark.parametrize("code, name", sorted(SPEC_TABLE.items()))
def test_every_code_of_the_table(code, name):
    assert aborts.code_of(name) == code
    assert aborts.name_of("db", code) == name


@pytest.mark.parametrize(
    "name, code",
    [
        ("ETaskNotFound", 312012017),
        ("ENodeNotSelectedForClaim", 312012054),
        ("ENodeRegDisabled", 312012000),
        ("EInsufficientBalance", 312012040),
        ("EStackAlreadyClaimed", 312012053),
        ("ENoNodesEligibleForTask", 312012022),
    ],
)
def test_spot_checks(name, code):
    assert aborts.code_of(name) == code
    assert aborts.name_of(aborts.DB_MODULE, code) == name


def test_table_is_complete_and_nothing_more():
    assert aborts.DB_ABORT_CODES == {name: code for code, name in SPEC_TABLE.items()}
    assert len(aborts.DB_ABORT_CODES) == 54
    assert set(aborts.DB_ABORT_CODES.values()) == set(range(312012000, 312012055)) - {312012008}


def test_312012008_is_unused():
    assert aborts.name_of("db", 312012008) is None
    assert 312012008 not in aborts.DB_ABORT_NAMES


@pytest.mark.parametrize("code", [312011999, 312012055, 312012100, 0, 1])
def test_unknown_db_codes(code):
    assert aborts.name_of("db", code) is None


def test_unknown_constant_name_raises():
    with pytest.raises(KeyError):
        aborts.code_of("ENoSuchError")


@pytest.mark.parametrize(
    "module, code, name",
    [
        ("dynamic_field", 0, "EFieldAlreadyExists"),
        ("dynamic_field", 1, "EFieldDoesNotExist"),
        ("balance", 2, "ENotEnough"),
        ("option", 0x40001, "EOPTION_NOT_SET"),
    ],
)
def test_framework_aborts(module, code, name):
    assert aborts.name_of(module, code) == name
    # a framework code is not read as an atoma::db constant, nor the other way round
    assert aborts.name_of("db", code) is None


def test_framework_and_db_codes_are_distinguished_by_module():
    assert aborts.name_of("dynamic_field", 312012017) is None
    assert aborts.name_of("balance", 1) is None


def test_move_abort_carries_module_code_and_name():
    exc = MoveAbort.db("ETaskNotFound")
    assert (exc.module, exc.code, exc.name) == ("db", 312012017, "ETaskNotFound")
    assert exc.to_json() == {"kind": "MoveAbort", "module": "db", "code": 312012017, "name": "ETaskNotFound"}
    framework = MoveAbort("dynamic_field", 1)
    assert framework.name == "EFieldDoesNotExist"
    assert MoveAbort("db", 312012008).name == "UNKNOWN"


def test_errors_roundtrip_through_recorded_effects():
    exc = abort_from_json(MoveAbort.db("ENodeNotSelectedForClaim").to_json())
    assert isinstance(exc, MoveAbort) and (exc.module, exc.code) == ("db", 312012054)
    arith = abort_from_json(MoveArithmeticError("u64 overflow").to_json())
    assert isinstance(arith, MoveArithmeticError)
