"""Part 4 (security), the fast slice: the whole refusal table on both paths of the Chain port, the harness's own
negative control, and keystore modes. ``python -m reliability.security`` runs the same table plus the demo's key
scan."""

from __future__ import annotations

import asyncio
import pytest

from atoma_ops.protocol import abi
from reliability import security
from reliability.security import PATHS, Case, build_scene, cases, keystore_modes, run_refusals


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """One scene for both paths: a refusal changes nothing, and each row compares its own before and after."""
    return asyncio.run(build_scene(tmp_path_factory.mktemp("security") / "scene"))


def test_the_table_covers_every_attack_the_issue_names():
    rows = cases()
    groups = {c.group for c in rows}
    assert groups == {"forged signature", "wrong sender", "another node's badge", "non-admin"}
    stolen = {c.function for c in rows if c.group == "another node's badge"}
    assert {"try_settle_stack", "submit_stack_settlement_attestation", "claim_funds", "subscribe_node_to_task"} <= stolen
    admin_only = {name for name, params in abi.ENTRY_FUNCTIONS.items() if any(p.type == abi.MANAGER_BADGE for p in params)}
    assert admin_only <= {c.function for c in rows if c.group == "non-admin"}
    forges = {c.forge for c in rows if c.group == "forged signature"} | {c.signer for c in rows}
    assert {"flip:1", "other-bytes", "empty", "node-1"} <= forges


@pytest.mark.parametrize("path", PATHS)
def test_every_refusal_is_named_and_changes_nothing(scene, path):
    results = asyncio.run(run_refusals(scene, path))
    failed = [r for r in results if not r["ok"]]
    assert not failed, failed
    refusals = [r for r in results if r["group"] != "control"]
    assert len(refusals) == len(cases())
    assert all(r["changed"] == [] for r in refusals)
    assert {r["error"] for r in refusals} == {"TransactionRejected", "InvalidArgument"}
    # The forged rows were refused for their signatures: the genuine one over the same call goes through.
    (control,) = [r for r in results if r["group"] == "control"]
    assert control["named"] and "chain" in control["changed"]


def test_a_row_that_is_not_refused_fails_the_table(scene):
    """The harness's own negative control: an accepted call is reported as a failure, with the change it made."""
    accepted = Case("forged signature", "not forged at all", "user", "acquire_new_stack_entry",
                    lambda s: {"task_small_id": s.task, "num_compute_units": 10, "price": 1_000_000},
                    ("TransactionRejected", "invalid signature"))
    (row, _control) = asyncio.run(run_refusals(scene, "localnet", [accepted]))
    assert row["error"] is None and not row["named"] and "chain" in row["changed"] and not row["ok"]


def test_keystores_are_0600_whoever_creates_them(tmp_path):
    rows = keystore_modes(tmp_path, None)
    assert {r["creator"] for r in rows} >= {"LocalnetHome.init", "Wallet.create", "CLI: atoma-ops localnet init"}
    assert [r for r in rows if r["mode"] != "0o600"] == []


def test_markdown_section_reports_each_path(scene):
    data = {"refusals": asyncio.run(run_refusals(scene, "localnet", cases()[:2])), "keystores": [], "controls": [],
            "ok": True}
    text = security.markdown(data)
    assert text.startswith("## 4. Security")
    assert "| forged signature |" in text and "digests unchanged" in text and "not run" in text


def test_only_the_stacks_owner_spends_it_over_http(scene):
    """Section 5 (last: it serves the control request and buys a stack on the shared scene)."""
    from reliability import http_security

    section = http_security.run(scene, units=security.UNITS, price=security.PRICE)
    assert section["ok"], section
    got = {r["case"]: (r["status"], r["error"]) for r in section["rows"]}
    assert got["forged signature (the owner's key, random bytes)"] == (401, "invalid_signature")
    assert got["the owner's request for another owner's stack"] == (400, "stack_not_found")
    assert len(got) == 7 and all(r["final"] and not r["changed"] for r in section["rows"])
    assert section["control"]["status"] == 200 and section["log_records"] > 0 and not section["key_hits"]
    text = "\n".join(http_security.markdown(section))
    assert "| no signature | 400 invalid_signature_header |" in text
