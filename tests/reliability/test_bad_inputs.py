"""The bad-input table of ``reliability.bad_inputs``, every row: each bad input gets its named error and documented
status and leaves the chain, the stack histories and the ledger unchanged.

The HTTP rows run against node-1's server on the stub engine of ``atoma_ops.testing`` (``make reliability`` runs them on
the CPU engine): every one of them is refused at admission (parsing, validation, signature, the stack's state and
units, the model name), before anything reaches an engine, so no model needs loading for them."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from reliability import bad_inputs as bi


@pytest.fixture(scope="module")
def scenario(tmp_path_factory) -> bi.Scenario:
    return bi.build_scenario(tmp_path_factory.mktemp("bad-inputs") / "scenario")


@pytest.fixture(scope="module")
def results(scenario, tmp_path_factory) -> dict[str, bi.Result]:
    from atoma_ops.testing.stub_engine import StubEngine

    with bi.quiet_logs():
        rows = bi.run_cases(bi.CASES, scenario, tmp_path_factory.mktemp("bad-input-cases"), engine=StubEngine())
    return {r.id: r for r in rows}


def test_the_table_covers_every_surface():
    ids = [c.id for c in bi.CASES]
    assert len(ids) == len(set(ids))
    surfaces = Counter(c.surface for c in bi.CASES)
    assert len(bi.CASES) >= 45 and set(surfaces) == {"cli", "flow", "http", "config"}, surfaces
    assert min(surfaces.values()) >= 10, surfaces
    # the chain-level refusals the issue names
    for name in ("EInvalidCommittedStackProof", "EStackDisputePeriodIsNotOver", "EFieldDoesNotExist", "ETooManyComputedUnits",
                 "ENodeNotSelectedForStack", "ArithmeticError"):
        assert any(c.error == name for c in bi.CASES), name


@pytest.mark.parametrize("case", bi.CASES, ids=[c.id for c in bi.CASES])
def test_bad_input(results, case):
    r = results[case.id]
    assert (r.observed_error, r.observed_status) == (case.error, case.status), r.message
    assert r.unchanged, r.digests
    assert r.ok


def test_a_good_input_fails_its_row(scenario, tmp_path):
    """The harness is not blind: an input the product accepts (a valid mint) fails its row on both counts."""
    case = bi.Case("good-mint", "cli", "a valid mint", "InvalidArgument", 1, ("cli", ["usdc", "mint", "--amount", "5"]))
    r = bi.run_isolated(scenario, case, tmp_path, bi.Snapshot.of(scenario.home))
    assert not r.ok and r.observed_status == 0 and r.observed_error is None
    assert not r.unchanged and r.digests == "no: chain changed"


def test_report_files(results, tmp_path):
    rows = list(results.values())
    assert bi.write(rows, 1.0, tmp_path, {"rows": 1.0}) is all(r.ok for r in rows)
    doc = json.loads((tmp_path / "bad_inputs.json").read_text())
    assert doc["ok"] is True and doc["rows"] == len(bi.CASES) == doc["passed"]
    md = (tmp_path / "bad_inputs.md").read_text()
    assert md.startswith("## 2. Bad input\n")
    assert md.count("| pass |") == len(bi.CASES) and "`cli-proof-31-bytes`" in md
