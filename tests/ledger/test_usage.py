"""Per-request usage appended in batches, and the intent journal."""

from __future__ import annotations

import hashlib
import shutil

import pandas as pd
import pytest

from atoma_ops.ledger import Ledger


def h(i: int) -> bytes:
    return hashlib.blake2b(i.to_bytes(8, "little"), digest_size=32).digest()


def usage_frame(stack: int, units: list[int], start: int = 0) -> pd.DataFrame:
    n = len(units)
    return pd.DataFrame({
        "stack_small_id": [stack] * n,
        "request_index": list(range(start, start + n)),
        "prompt_tokens": [100] * n,
        "completion_tokens": [50] * n,
        "estimated_units": [u + 10 for u in units],
        "actual_units": units,
        "latency_ms": [12.5] * n,
        "payload_hash": [h(stack * 1000 + i) for i in range(start, start + n)],
        "response_hash": [h(10**6 + stack * 1000 + i) for i in range(start, start + n)],
    })


@pytest.fixture
def ledger(synced, tmp_path) -> Ledger:
    copy = tmp_path / "ledger.duckdb"
    shutil.copy(synced.path, copy)
    return Ledger(copy)


def test_append_usage_feeds_utilisation(ledger, scenario):
    a, f = scenario.ids["A"], scenario.ids["F"]
    assert ledger.append_usage(usage_frame(a, [100_000] * 4)) == 4
    assert ledger.append_usage(usage_frame(f, [150_000, 140_000])) == 2
    util = ledger.stacks().set_index("stack_small_id")
    row = util.loc[a]
    assert (int(row["units_bought"]), int(row["requests"]), int(row["units_served"]), int(row["units_claimed"])) == (
        1_000_000, 4, 400_000, 400_000)
    assert int(row["units_estimated"]) == 400_040 and int(row["claimed_minus_served"]) == 0
    row = util.loc[f]
    assert (int(row["units_served"]), int(row["units_claimed"]), int(row["claimed_minus_served"])) == (290_000, 300_000, 10_000)
    stored = ledger.usage(a)
    assert list(stored["request_index"]) == [0, 1, 2, 3]
    assert bytes(stored.iloc[0]["payload_hash"]) == h(a * 1000)


def test_a_retried_batch_is_skipped_and_an_overlapping_one_keeps_its_new_rows(ledger, scenario):
    a = scenario.ids["A"]
    assert ledger.append_usage(usage_frame(a, [1, 2, 3])) == 3
    assert ledger.append_usage(usage_frame(a, [1, 2, 3])) == 0
    assert ledger.append_usage(usage_frame(a, [2, 3, 4, 5], start=1)) == 2
    assert ledger.usage(a)["actual_units"].tolist() == [1, 2, 3, 4, 5]  # rows 1 and 2 kept their first values


def test_optional_columns_hex_hashes_and_validation(ledger, scenario):
    a = scenario.ids["G"]
    minimal = pd.DataFrame({"stack_small_id": [a, a], "request_index": [0, 1], "actual_units": [5, 6],
                            "payload_hash": ["0x" + h(1).hex(), h(2).hex()]})
    assert ledger.append_usage(minimal) == 2
    got = ledger.usage(a)
    assert bytes(got.iloc[0]["payload_hash"]) == h(1) and bytes(got.iloc[1]["payload_hash"]) == h(2)
    assert got["prompt_tokens"].isna().all()
    with pytest.raises(ValueError, match="unknown column"):
        ledger.append_usage(pd.DataFrame({"stack_small_id": [1], "request_index": [9], "tokens": [1]}))
    with pytest.raises(ValueError, match="missing required"):
        ledger.append_usage(pd.DataFrame({"stack_small_id": [1], "actual_units": [1]}))
    with pytest.raises(ValueError, match="CHECK"):
        ledger.append_usage(pd.DataFrame({"stack_small_id": [1], "request_index": [9], "payload_hash": [b"short"]}))
    assert len(ledger.usage(1)) == 0  # the failed batches wrote nothing


def test_intent_journal(ledger):
    ledger.record_action("settle:7", "try_settle_stack", "signed", stack_small_id=7, sender="0xabc",
                         args={"num_claimed_compute_units": 5}, signed_tx_bytes=b"\x01\x02", digest="D1")
    ledger.record_action("settle:7", "try_settle_stack", "submitted", attempt=True)
    ledger.record_action("settle:7", "try_settle_stack", "failed", attempt=True, last_error_code="db:312012014",
                         last_error="EStackInSettlementDispute")
    row = ledger.query("SELECT * FROM chain_actions").iloc[0]
    assert (row["status"], int(row["attempts"]), row["digest"], bytes(row["signed_tx_bytes"])) == ("failed", 2, "D1", b"\x01\x02")
    assert int(row["stack_small_id"]) == 7 and row["last_error_code"] == "db:312012014"
    assert row["updated_at"] >= row["created_at"]
