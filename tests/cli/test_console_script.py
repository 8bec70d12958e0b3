"""The installed ``atoma-ops`` console script in real subprocesses: exit codes, streams, and what it imports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(sys.executable).parent / "atoma-ops"

pytestmark = pytest.mark.skipif(not SCRIPT.exists(), reason="the atoma-ops console script is not installed")


def run(*args: str, python_flags: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "ATOMA_OPS_HOME"}
    return subprocess.run(
        [sys.executable, *python_flags, str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=60
    )


def imported_modules(stderr: str) -> set[str]:
    """Module names from ``python -X importtime`` output."""
    names = set()
    for line in stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip())
    return names


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> str:
    h = tmp_path_factory.mktemp("console") / "home"
    r = run("--home", str(h), "localnet", "init", "--seed", "1")
    assert r.returncode == 0, r.stderr
    return str(h)


def test_exit_codes_and_streams(home):
    ok = run("--home", home, "--json", "db", "register-node")
    assert ok.returncode == 0 and json.loads(ok.stdout)["status"] == "success" and ok.stderr == ""

    usage = run("--home", home, "db", "get-task", "--bogus")
    assert usage.returncode == 2 and "No such option" in usage.stderr and usage.stdout == ""

    usage_json = run("--home", home, "--json", "db", "get-task", "--bogus")
    assert usage_json.returncode == 2
    assert json.loads(usage_json.stdout) == {"error": {"kind": "UsageError", "message": "No such option: --bogus"}}

    # the admin (active address) now holds NodeBadge 1 but there is no ticket 1: a framework abort, exit 1
    framework = run("--home", home, "--json", "db", "claim-funds", "--settled-ticket-ids", "1")
    assert framework.returncode == 1 and framework.stderr == ""
    assert json.loads(framework.stdout) == {
        "error": {"kind": "MoveAbort", "module": "dynamic_field", "code": 1, "name": "EFieldDoesNotExist"}
    }

    # the user holds no NodeBadge: refused before signing, exit 1, a message and no traceback
    no_badge = run("--home", home, "--address", "user", "db", "withdraw-fees")
    assert no_badge.returncode == 1 and no_badge.stdout == ""
    assert "owns no NodeBadge" in no_badge.stderr and "Traceback" not in no_badge.stderr

    bad = run("--home", home, "usdc", "mint", "--amount", "-1")
    assert bad.returncode == 1 and "Traceback" not in bad.stderr and "amount" in bad.stderr

    missing = run("--home", home + "-missing", "--json", "usdc", "balance")
    assert missing.returncode == 1 and json.loads(missing.stdout)["error"]["kind"] == "NotFound"


def test_move_abort_exit_1_names_abort_and_code(home):
    r = run("--home", home, "db", "create-task-entry", "--role", "9")
    assert r.returncode == 1 and r.stdout == ""
    assert "EInvalidTaskRole" in r.stderr and "312012035" in r.stderr and "Traceback" not in r.stderr


def test_db_command_does_not_import_prefect(home):
    r = run("--home", home, "--json", "db", "get-node", "--node-small-id", "999", python_flags=("-X", "importtime"))
    assert r.returncode == 1 and json.loads(r.stdout)["error"]["kind"] == "NotFound"
    modules = imported_modules(r.stderr)
    assert "atoma_ops.cli" in modules and "atoma_ops.home" in modules  # the measurement saw the real work
    assert not {m for m in modules if m == "prefect" or m.startswith("prefect.")}


def test_db_help_imports_neither_the_wallet_nor_prefect():
    r = run("db", "--help", python_flags=("-X", "importtime"))
    assert r.returncode == 0 and "try-settle-stack" in r.stdout
    modules = imported_modules(r.stderr)
    assert "atoma_ops.cli" in modules
    heavy = {m.split(".")[0] for m in modules} & {"prefect", "pysui", "pandas", "duckdb"}
    assert not heavy
    assert "atoma_ops.wallet" not in modules and "atoma_ops.home" not in modules


def test_a_full_disk_is_one_named_error_and_the_ledger_recovers(home, tmp_path):
    """A file-size limit stands in for a full disk (a write past it fails with EFBIG, SIGXFSZ ignored, as a write
    to a full disk fails with ENOSPC): ``ledger sync`` ends with one named error, exit 1, and the next sync
    (no limit) indexes everything."""
    from reliability.bad_inputs import copy_home

    copy = tmp_path / "home"
    copy_home(Path(home), copy)
    script = f"trap '' XFSZ; ulimit -f 40; exec {sys.executable} {SCRIPT} --home {copy} --json ledger sync"
    env = {k: v for k, v in os.environ.items() if k != "ATOMA_OPS_HOME"}
    full = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env, timeout=60)
    assert full.returncode == 1 and "Traceback" not in full.stderr, full.stderr
    error = json.loads(full.stdout)["error"]
    assert error["kind"] == "TransactionException" and "File too large" in error["message"]
    again = run("--home", str(copy), "--json", "ledger", "sync")
    assert again.returncode == 0 and json.loads(again.stdout)["events_applied"] >= 1, again.stderr
