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


# ============================================================================== latency from the node stores
OLD_HISTORY = """
CREATE TABLE history (
    stack_small_id INTEGER NOT NULL, idx INTEGER NOT NULL, request BLOB NOT NULL, response BLOB NOT NULL,
    units INTEGER NOT NULL, usage_units INTEGER NOT NULL, reserved_units INTEGER NOT NULL,
    payload_hash BLOB NOT NULL, response_hash BLOB NOT NULL, leaf BLOB NOT NULL, served_at_ms INTEGER NOT NULL,
    PRIMARY KEY (stack_small_id, idx)
) WITHOUT ROWID
"""
# what the node store adds to a store from before (serving/store.py ADDED_COLUMNS)
NEW_COLUMNS = ("request_id TEXT", "seed INTEGER", "arrived_ms INTEGER", "first_token_ms INTEGER")


def node_store(home, alias: str, stack: int, rows: list[dict], *, with_times: bool) -> None:
    """A node's serving store written by hand: the history table as the node writes it, with or without the
    per-request time columns."""
    import json
    import sqlite3

    path = home / "nodes" / alias / "serving.sqlite"
    path.parent.mkdir(parents=True)
    con = sqlite3.connect(path)
    con.execute(OLD_HISTORY)
    if with_times:
        for column in NEW_COLUMNS:
            con.execute(f"ALTER TABLE history ADD COLUMN {column}")
    for i, r in enumerate(rows):
        response = {"choices": [], "usage": {"prompt_tokens": r["prompt"], "completion_tokens": r["completion"]}}
        values = {"stack_small_id": stack, "idx": i, "request": b"{}", "response": json.dumps(response).encode(),
                  "units": r["prompt"] + r["completion"], "usage_units": r["prompt"] + r["completion"],
                  "reserved_units": 100, "payload_hash": h(stack * 100 + i), "response_hash": h(stack * 200 + i),
                  "leaf": h(stack * 300 + i), "served_at_ms": r["served"]}
        if with_times:
            values.update(request_id=f"req-{i}", seed=None, arrived_ms=r["arrived"], first_token_ms=r["first"])
        con.execute(f"INSERT INTO history ({', '.join(values)}) VALUES ({', '.join('?' * len(values))})",
                    list(values.values()))
    con.commit()
    con.close()


def test_latency_and_ttft_come_from_the_node_store(ledger, scenario, tmp_path):
    a, d = scenario.ids["A"], scenario.ids["D"]  # A: task 1 on node-1; D: task 1 on node-3
    home = tmp_path / "home"
    node_store(home, "node-1", a, [
        {"prompt": 10, "completion": 5, "arrived": 1_000, "first": 1_040, "served": 1_250},   # 250 ms, ttft 40
        {"prompt": 12, "completion": 7, "arrived": 2_000, "first": 2_100, "served": 2_300},   # 300 ms, ttft 100
        {"prompt": 9, "completion": 0, "arrived": 3_000, "first": None, "served": 3_010},     # dropped before a token
    ], with_times=True)
    node_store(home, "node-3", d, [  # a store from before the times were recorded
        {"prompt": 20, "completion": 4, "served": 9_000},
        {"prompt": 21, "completion": 3, "served": 9_500},
    ], with_times=False)
    assert ledger.import_node_usage(home) == 5

    rows = ledger.usage(a)
    assert rows["latency_ms"].tolist() == [250.0, 300.0, 10.0]
    assert rows["ttft_ms"].tolist()[:2] == [40.0, 100.0] and pd.isna(rows["ttft_ms"].iloc[2])
    assert rows["served_at_ms"].tolist() == [1_250, 2_300, 3_010]  # still the finish time
    old = ledger.usage(d)
    assert old["latency_ms"].isna().all() and old["ttft_ms"].isna().all()  # NULL, never a made-up 0
    assert old["completion_tokens"].tolist() == [4, 3]

    util = ledger.stacks().set_index("stack_small_id")
    assert util.loc[a, "avg_latency_ms"] == pytest.approx((250 + 300 + 10) / 3)
    assert util.loc[a, "avg_ttft_ms"] == pytest.approx((40 + 100) / 2)  # the row without a first token is left out
    assert pd.isna(util.loc[d, "avg_latency_ms"]) and pd.isna(util.loc[d, "avg_ttft_ms"])

    lat = ledger.latency().set_index(["node_small_id", "task_small_id"])
    n1 = lat.loc[(1, 1)]
    assert (int(n1["requests"]), int(n1["requests_timed"]), int(n1["completion_tokens"])) == (3, 3, 12)
    # quantile_cont over [10, 250, 300]: p50 = 250; p99 at position 2 × 0.99 = 1.98 ⇒ 250 + 0.98 × 50 = 299
    assert (n1["latency_p50_ms"], n1["latency_p99_ms"]) == (pytest.approx(250.0), pytest.approx(299.0))
    # over [40, 100]: p50 = 70; p99 at 0.99 ⇒ 40 + 0.99 × 60 = 99.4
    assert (n1["ttft_p50_ms"], n1["ttft_p99_ms"], n1["ttft_avg_ms"]) == (
        pytest.approx(70.0), pytest.approx(99.4), pytest.approx(70.0))
    n3 = lat.loc[(3, 1)]
    assert (int(n3["requests"]), int(n3["requests_timed"])) == (2, 0) and pd.isna(n3["latency_p50_ms"])

    assert ledger.import_node_usage(home) == 0  # the times do not make an imported row new


def test_a_ledger_from_before_ttft_migrates_and_keeps_its_rows(tmp_path):
    import duckdb

    from atoma_ops.ledger.migrations import MIGRATIONS, MIGRATIONS_TABLE

    path = tmp_path / "v2.duckdb"
    con = duckdb.connect(str(path))
    con.execute(MIGRATIONS_TABLE)
    for version, name, sql in MIGRATIONS[:2]:  # the schema as it shipped before ttft_ms
        con.execute(sql)
        con.execute("INSERT INTO schema_migrations (version, name) VALUES (?, ?)", [version, name])
    con.execute("INSERT INTO usage (stack_small_id, request_index, actual_units, latency_ms) VALUES (5, 0, 30, 12.5)")
    con.close()

    ledger = Ledger(path)
    assert ledger.append_usage(pd.DataFrame({"stack_small_id": [5], "request_index": [1], "actual_units": [40],
                                             "latency_ms": [20.0], "ttft_ms": [4.0]})) == 1
    rows = ledger.usage(5)
    assert rows["latency_ms"].tolist() == [12.5, 20.0]
    assert pd.isna(rows["ttft_ms"].iloc[0]) and rows["ttft_ms"].iloc[1] == 4.0
    versions = ledger.query("SELECT version FROM schema_migrations ORDER BY version")["version"].tolist()
    assert versions == [m[0] for m in MIGRATIONS] == [1, 2, 3, 4, 5]
