"""Part 4 (security), the key scan: positive controls in every kind of place, then the demo's flow
(``stack_lifecycle``, as scripts/demo.py runs it, in a temporary home with manual epochs) leaves no key anywhere:
files, SQLite and DuckDB tables, the Prefect API's logs and artifacts, captured output and log records.

The flow serves and replays its stack on the stub engine of ``atoma_ops.testing`` rather than the CPU engine (a
15-20 s model load): no key passes through an engine, and everything the flow writes around its completions (the
journal, the node stores, the ledger, the Prefect runs, logs and artifacts) is the same. ``make reliability`` scans
after the real demo, CPU engine included (``reliability.security``)."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import pickle
from pathlib import Path

import pytest
from prefect.settings import PREFECT_SERVER_DATABASE_CONNECTION_URL

from atoma_ops.home import LocalnetHome
from atoma_ops.wallet import Wallet
from blocks import AtomaNetwork, InferenceEngine
from flows import stack_lifecycle
from reliability.keyscan import KeyScanner, load_keys
from reliability.security import plant_controls, run_planted_flow


def harness_db() -> Path:
    """The SQLite file behind the session's Prefect test harness."""
    return Path(PREFECT_SERVER_DATABASE_CONNECTION_URL.value().split(":///", 1)[1])


@pytest.fixture
def throwaway(tmp_path) -> tuple[Path, str, bytes]:
    wallet = Wallet.create(tmp_path / "throwaway", ["planted"], env_alias="x")
    entry = json.loads(wallet.keystore_path.read_text())[0]
    return wallet.keystore_path, entry, base64.b64decode(entry)[1:]


def test_every_form_of_a_key_is_found_and_nothing_else(throwaway):
    keystore, entry, secret = throwaway
    (forms,) = load_keys([keystore])
    assert entry not in repr(forms) and secret.hex() not in str(forms)
    with pytest.raises(TypeError):
        pickle.dumps(forms)
    scanner = KeyScanner([forms])
    planted = {
        "keystore entry": entry.encode(),
        "bech32": next(s for s, e in forms.folded.items() if e == "bech32 suiprivkey").upper().encode(),
        "hex": b"key=" + secret.hex().upper().encode() + b";",
        "raw": os.urandom(50) + secret + os.urandom(50),
        "base64, shifted by one": base64.b64encode(b"a" + secret + b"tail").replace(b"=", b""),
        "base64, shifted by two": base64.b64encode(b"ab" + secret),
        "base64url inside a blob": base64.urlsafe_b64encode(os.urandom(31) + secret + os.urandom(9)),
        "int list": json.dumps({"k": list(secret)}).encode(),
        "secret+public hex": (secret + forms_public(entry)).hex().encode(),
    }
    for name, data in planted.items():
        assert scanner.scan_bytes(data, name, "file"), f"{name} not found"
    near_miss = bytearray(secret)
    near_miss[16] ^= 1
    assert scanner.scan_bytes(bytes(near_miss) + near_miss.hex().encode() + os.urandom(4096), "noise", "file") == []
    assert {h.address for h in scanner.hits} == {forms.address}


def forms_public(entry: str) -> bytes:
    from atoma_ops.wallet import keypair_from_keystring

    return bytes(keypair_from_keystring(entry).public_key_bytes)


def test_positive_controls_in_files_sqlite_duckdb_and_the_prefect_api(tmp_path):
    keystore, places = plant_controls(tmp_path)
    run_id = run_planted_flow(keystore)  # under the session's harness
    scanner = KeyScanner.for_roots([tmp_path])
    assert scanner.skip == {keystore.resolve()}
    scanner.scan_tree(tmp_path, base=tmp_path)
    asyncio.run(scanner.scan_prefect_api([run_id]))
    for label, kind in places.items():
        assert any(h.kind == kind and f"places/{label}" in h.place for h in scanner.hits), (label, kind)
    assert {h.kind for h in scanner.hits} >= {"file", "sqlite", "duckdb", "prefect-log", "prefect-artifact"}
    assert not any("throwaway" in h.place for h in scanner.hits)  # the keystore itself is not a leak
    # The same log line and artifact, found in the API's database file as well.
    db = KeyScanner.for_roots([], [keystore])
    db.scan_file(harness_db())
    assert {h.place.rsplit(" ", 1)[-1] for h in db.hits} >= {"log", "artifact"}
    assert db.searched["prefect_log_lines"] >= 1 and db.searched["prefect_artifacts"] >= 1


@pytest.fixture
def stub_engine_block():
    """An engine block whose engine is the stub: put in the process's engine cache (``tasks.runtime.shared_engine``)
    under the block's key, so the flow's serving and replay tasks use it without loading a model."""
    from atoma_ops.testing.stub_engine import StubEngine
    from tasks.runtime import _engines

    block = InferenceEngine(kind="openai", model="stub", base_url="http://stub.invalid")
    _engines[block.cache_key()] = StubEngine()
    yield block
    _engines.pop(block.cache_key(), None)


def test_the_demo_flow_leaves_no_key_anywhere(tmp_path, caplog, capfd, stub_engine_block):
    home = tmp_path / "localnet"
    localnet, _ = LocalnetHome(home).init(seed=7)  # as scripts/demo.py, but manual epochs
    localnet.close()
    workload = tmp_path / "workload.jsonl"
    workload.write_text("".join(json.dumps({"messages": [{"role": "user", "content": c}], "max_tokens": 4}) + "\n"
                                for c in ("Say hello.", "Name a colour.")))
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.INFO, logger="prefect")  # the flows' and tasks' logs go to the API too
    summary = asyncio.run(stack_lifecycle(workload=str(workload), network=AtomaNetwork(home=str(home), epoch_poll_s=0.05),
                                          engine=stub_engine_block))
    assert summary["claims"] and summary["attestations"]

    scanner = KeyScanner.for_roots([home])
    assert len(scanner.keys) == 5 and scanner.skip == {(home / "sui.keystore").resolve()}
    scanner.scan_tree(home, base=tmp_path)
    scanner.scan_tree(Path(os.environ["PREFECT_HOME"]))  # the session's Prefect home: cached task results
    scanner.scan_file(harness_db())
    asyncio.run(scanner.scan_prefect_api())
    records = "\n".join(f"{r.name} {r.getMessage()} {r.args!r}" for r in caplog.records)
    scanner.scan_text(records, "log records")
    captured = capfd.readouterr()
    scanner.scan_text(captured.out + captured.err, "captured stdout/stderr")

    report = scanner.report()
    assert report.hits == []
    searched = report.searched
    assert searched["duckdb_tables"] >= 5 and searched["duckdb_rows"] > 0  # the ledger, rows queried
    assert searched["sqlite_tables"] > 0 and searched["files"] >= 4  # chain, node stores, Prefect's database
    assert searched["prefect_log_lines"] > 0 and searched["prefect_artifacts"] > 0
    assert len(caplog.records) > 0
    assert stat_mode(home / "sui.keystore") == 0o600


def stat_mode(path: Path) -> int:
    return path.stat().st_mode & 0o777
