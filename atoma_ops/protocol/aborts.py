"""Abort codes of ``atoma::db`` and the Sui framework aborts the contract can hit (atoma-protocol.md §1.1)."""

from __future__ import annotations

EBASE = 312_012_000

# name -> offset from EBASE (312012008 is unused).
_DB_ABORTS = {
    "ENodeRegDisabled": 0,
    "EModelDisabled": 1,
    "ENotAuthorized": 2,
    "EProtocolFeeCannotBeZero": 3,
    "ERelativePerformanceCannotBeZero": 4,
    "EEchelonNotFound": 5,
    "EEchelonAlreadyExistsForModel": 6,
    "ETotalPermilleMustBeLessThan1000": 7,
    "ENodeAlreadySubscribedToModel": 9,
    "ENodeNotSubscribedToModel": 10,
    "ENodeIndexMismatch": 11,
    "ENodeAlreadyDisabled": 12,
    "ENodeMustWaitBeforeDestroy": 13,
    "ECannotSampleZeroNodes": 14,
    "ETaskDeprecated": 15,
    "ENodeAlreadySubscribedToTask": 16,
    "ETaskNotFound": 17,
    "ENodeNotSubscribedToTask": 18,
    "ENotEnoughEpochsPassed": 19,
    "ETaskNotDeprecated": 20,
    "ENoNodesSubscribedToTask": 21,
    "ENoNodesEligibleForTask": 22,
    "ENodeNotSelectedForStack": 23,
    "EStackInSettlementDispute": 24,
    "ETooManyComputedUnits": 25,
    "EStackDoesNotRequireSamplingConsensus": 26,
    "EStackNotFound": 27,
    "EStackNotInSettlementDispute": 28,
    "EStackDisputePeriodOver": 29,
    "ENodeNotSelectedForAttestation": 30,
    "EStackInDispute": 31,
    "EStackDisputePeriodIsNotOver": 32,
    "ENodeNotSelectedForSettlement": 33,
    "ETaskAlreadyDeprecated": 34,
    "EInvalidTaskRole": 35,
    "EInvalidSecurityLevel": 36,
    "EInvalidPricePerComputeUnit": 37,
    "ENodeDoesNotMeetTaskRequirements": 38,
    "EInvalidComputeUnits": 39,
    "EInsufficientBalance": 40,
    "EInvalidCommittedStackProof": 41,
    "EInvalidStackMerkleLeaf": 42,
    "EInvalidMinimumReputationScore": 43,
    "ETaskIsPublic": 44,
    "ENodeNotWhitelistedForTask": 45,
    "EStackAlreadyInDispute": 46,
    "ETaskSecurityLevelNotSamplingConsensus": 47,
    "EInvalidDeviceType": 48,
    "EInvalidKeyRotationCounter": 49,
    "EPublicKeyCommitmentMismatch": 50,
    "ETaskIsNotConfidentialCompute": 51,
    "EInvalidNumClaimedComputeUnitsPerStack": 52,
    "EStackAlreadyClaimed": 53,
    "ENodeNotSelectedForClaim": 54,
}

DB_ABORT_CODES: dict[str, int] = {name: EBASE + off for name, off in _DB_ABORTS.items()}
DB_ABORT_NAMES: dict[int, str] = {code: name for name, code in DB_ABORT_CODES.items()}

# Framework aborts, as (module, code) -> name.
FRAMEWORK_ABORTS: dict[tuple[str, int], str] = {
    ("dynamic_field", 0): "EFieldAlreadyExists",
    ("dynamic_field", 1): "EFieldDoesNotExist",
    ("balance", 2): "ENotEnough",
    ("option", 0x40001): "EOPTION_NOT_SET",
}

DB_MODULE = "db"


def code_of(name: str) -> int:
    """The abort code of an ``atoma::db`` error constant, e.g. ``code_of("ETaskNotFound") == 312012017``."""
    return DB_ABORT_CODES[name]


def name_of(module: str, code: int) -> str | None:
    """The constant name for an abort code, or None when unknown."""
    if module == DB_MODULE:
        return DB_ABORT_NAMES.get(code)
    return FRAMEWORK_ABORTS.get((module, code))
