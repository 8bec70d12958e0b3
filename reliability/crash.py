"""Crash injection: kill the process (SIGKILL) at every step boundary of ``stack_lifecycle`` and ``settlement_run``
and inside every chain-writing task, then run again and check that the run converged.

How the crash points are found: each scenario runs once, clean, with ``$ATOMA_OPS_FAILPOINT_TRACE`` set; every
failpoint it passes is traced (``atoma_ops.core.failpoints``):

- ``step:<task or stage>:start`` / ``:done``: every Prefect task and stage flow (hooks in ``tasks/runtime.py``);
- ``journal:before-write:<fn>``: signed, not journaled; ``journal:after-write:<fn>``: journaled, not submitted;
  ``journal:between-submits:<fn>``: part of a batch submitted; ``journal:after-submit:<fn>``: executed on chain,
  outcome not recorded;
- ``faucet:after-mint``: the faucet minted, the journal does not know yet;
- ``serve:after-reserve`` / ``serve:after-engine`` / ``serve:after-record``: one served request (a workload line of
  the serve-stack flow, served concurrently with the others) with its compute units reserved, its answer computed,
  its answer charged and in the history but not returned; the n-th pass is the n-th request to get there.

The n-th pass of a name is one crash point. For each point, in a fresh copy of the scenario's starting state: run
with the point armed (the process must die by SIGKILL), on every other case crash the recovery run too at the
first pass of the same name (a crash while recovering), then run without failpoints. The result must be the clean
run's, exactly:

- the same successful transactions, by entry function (each write exactly once), none refused by the chain;
- the same events per stack (each stack settled and claimed exactly once) and no ticket left unclaimed;
- the same USDC minted (no second faucet mint) and balances, every minted unit accounted for (coins + treasuries
  + collateral);
- the same served histories, in whatever order the node recorded them (no request served twice, the same answers,
  none recorded as refused that the clean run served), the same journal keys, none left ``pending``;
- the ledger synced and reconciled against the chain without drift.

Processes: one parent imports everything (and loads the CPU engine once, single-threaded), then ``fork``s a
runner per case, which forks each run. No thread may exist in the parent when it forks (checked). Every run talks to
one Prefect API: a ``prefect server`` started here, or ``--api-url``.

    .venv/bin/python -m reliability.crash [--scenario NAME ...] [--jobs 2] [--sample N] [--api-url URL]
                                          [--no-signer-lease]
"""

from __future__ import annotations

import os

# Before numpy/torch/tokenizers load: forked children must not inherit thread pools.
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "ERROR")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
# The step-boundary failpoints (tasks/runtime.py STEP_HOOKS) exist only where asked for before the tasks are
# imported: the forked runs arm them after this process imported everything.
os.environ["ATOMA_OPS_STEP_HOOKS"] = "1"
# A killed run's reservations go stale when their leases run out (atoma_ops.serving.store): short leases, waited out
# after each crash, keep a case from waiting the production default.
os.environ.setdefault("ATOMA_OPS_RESERVATION_LEASE_S", "2")

import argparse  # noqa: E402
import hashlib  # noqa: E402
import asyncio  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import sqlite3  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import urllib.request  # noqa: E402
from collections import Counter  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Callable  # noqa: E402

from atoma_ops.core.failpoints import FAILPOINT_TRACE_ENV, FAILPOINTS_ENV  # noqa: E402
from atoma_ops.testing.forking import run_forked  # noqa: E402
from atoma_ops.testing.leases import free_signer_slots, wait_out_leases  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "data" / "reliability"
SEED = 7
#: a small workload: the crash points are the subject, not the model
WORKLOAD = [
    {"messages": [{"role": "user", "content": "Say yes."}], "max_tokens": 4},
    {"messages": [{"role": "user", "content": "Name a colour."}], "max_tokens": 4},
]


# ----------------------------------------------------------------------------------------------- scenarios
@dataclass(frozen=True)
class Scenario:
    name: str
    what: str
    prepare: Callable[[Path], None]  # writes the starting state into an empty home
    drive: Callable[[Path], None]  # the run that is crashed and re-run (in a child process)
    needs_engine: bool


def _fresh_localnet(home: Path) -> None:
    from atoma_ops.home import LocalnetHome

    localnet, _ = LocalnetHome(home).init(seed=SEED)  # manual epochs: the waiting stage advances them
    localnet.close()
    (home / "workload.jsonl").write_text("".join(json.dumps(r) + "\n" for r in WORKLOAD))


def _lifecycle(security_level: str) -> Callable[[Path], None]:
    def drive(home: Path) -> None:
        from blocks import AtomaNetwork
        from flows import stack_lifecycle

        asyncio.run(stack_lifecycle(
            key="crash", workload=str(home / "workload.jsonl"), security_level=security_level,
            num_compute_units=10_000, network=AtomaNetwork(home=str(home)),
        ))

    return drive


SETTLE_STACKS = 4
SETTLE_BATCH = 2


def _served_stacks(home: Path) -> None:
    from atoma_ops.testing.served import served_stacks  # stacks served with recorded outputs, no engine

    served_stacks(home, SETTLE_STACKS)


def _settle_then_claim(home: Path) -> None:
    """What the ops team's schedule does: a settlement run, the dispute window passing, a settlement run."""
    from atoma_ops.home import LocalnetHome
    from blocks import AtomaNetwork
    from flows.settlement import settlement_run

    network = AtomaNetwork(home=str(home))
    options = dict(idle_after_s=0, settle_batch_size=SETTLE_BATCH, claim_batch_size=SETTLE_BATCH, network=network)

    async def go() -> None:
        await settlement_run(**options)
        chain = LocalnetHome(home).open()
        try:
            tickets = chain.localnet.list_tickets()
            if tickets:
                target = max(t.dispute_settled_at_epoch for t in tickets)
                now = await chain.current_epoch()
                if target > now:
                    await chain.advance_epoch(target - now)
        finally:
            await chain.close()
        await settlement_run(**options)

    asyncio.run(go())


SCENARIOS = {
    s.name: s
    for s in (
        Scenario("lifecycle", "`stack_lifecycle`, Sampling Consensus (3 nodes, one stack, an attestation, a claim)",
                 _fresh_localnet, _lifecycle("sampling_consensus"), True),
        Scenario("lifecycle-confidential", "`stack_lifecycle`, ConfidentialCompute (claimed without a ticket)",
                 _fresh_localnet, _lifecycle("confidential_compute"), True),
        Scenario("settlement", f"`settlement_run` twice around the dispute window ({SETTLE_STACKS} served stacks, "
                 f"batches of {SETTLE_BATCH})", _served_stacks, _settle_then_claim, False),
    )
}


# ----------------------------------------------------------------------------------------------- what a run left
def facts(home: Path) -> dict:
    """What must be identical between the clean run and every crashed-then-re-run one."""
    from atoma_ops.chain.localnet.engine import CHAIN_FILE
    from atoma_ops.home import LocalnetHome
    from atoma_ops.ledger import Ledger
    from atoma_ops.serving.store import NodeStore

    calls, refused = Counter(), Counter()
    con = sqlite3.connect(f"file:{home / CHAIN_FILE}?mode=ro", uri=True)
    try:
        for tx_bytes, status in con.execute("SELECT tx_bytes, status FROM transactions ORDER BY seq"):
            for command in json.loads(bytes(tx_bytes)).get("commands", []):
                if command.get("kind") == "MoveCall":
                    (calls if status == "success" else refused)[command["function"]] += 1
    finally:
        con.close()

    async def on_chain(chain) -> dict:
        events, cursor = Counter(), None
        while True:
            page = await chain.events(cursor, 500)
            for e in page.events:
                stack = (e.parsed_json or {}).get("stack_small_id")
                events[f"{e.name}:{stack['inner'] if stack else '-'}"] += 1
            cursor = page.next_cursor
            if not page.has_next_page:
                break
        wallet = chain.wallet
        balances = {a.alias: await chain.usdc_balance(a.address) for a in wallet.accounts()}
        report = await Ledger(home / "ledger.duckdb").reconcile(chain)
        return {
            "events": dict(sorted(events.items())),
            "balances": balances,
            "usdc": chain.localnet.total_usdc(),
            "tickets_left": len(chain.localnet.list_tickets()),
            "unclaimed_stacks": sum(1 for s in chain.localnet.list_stacks() if not s.is_claimed),
            "reconcile_ok": report.ok,
            "drift": report.drift.to_string() if not report.ok else "",
        }

    async def go() -> dict:
        chain = LocalnetHome(home).open()
        try:
            return await on_chain(chain)
        finally:
            await chain.close()

    out = asyncio.run(go())
    histories = {}
    for store_path in sorted((home / "nodes").glob(f"*/{NodeStore.path_for(home, 'x').name}")):
        with NodeStore(store_path) as store:
            for u in store.stacks():
                h = store.history(u.stack_small_id)
                seen = store.request_ids(u.stack_small_id)
                # the served requests and answers, not their order: a node records requests as they end, so a
                # re-run after a crash may record them in another order than the clean run (another root, which
                # the commitment and the attesters' replay follow: a dispute would show in the events)
                leaves = hashlib.blake2b(b"".join(sorted(e.leaf for e in h.entries)), digest_size=16).hexdigest()
                histories[f"{store_path.parent.name}:{u.stack_small_id}"] = {
                    "requests": len(h), "units": h.units, "leaves": leaves, "state": u.state,
                    "in_flight": u.in_flight, "refused": sum(1 for v in seen.values() if v == "refused"),
                }
    rows = Ledger(home / "ledger.duckdb").actions()
    usdc = out.pop("usdc")
    out.update(
        calls=dict(sorted(calls.items())), refused=dict(refused), histories=histories, minted=usdc["minted"],
        usdc_accounted=usdc["minted"] == usdc["coins"] + usdc["fee_treasury"] + usdc["communal_treasury"]
        + usdc["collateral"],
        journal_keys=sorted(rows), journal_pending=sorted(k for k, r in rows.items() if r["status"] == "pending"),
    )
    return out


#: check name -> (what it proves, how it is judged against the clean run's facts)
CHECKS: dict[str, tuple[str, Callable[[dict, dict], bool]]] = {
    "exactly_once": ("the same successful transactions by entry function; none refused",
                     lambda f, ref: f["calls"] == ref["calls"] and not f["refused"]),
    "settled_claimed_once": ("the same events per stack; no ticket or stack left unclaimed",
                             lambda f, ref: f["events"] == ref["events"] and f["tickets_left"] == 0
                             and f["unclaimed_stacks"] == ref["unclaimed_stacks"]),
    "usdc_conserved": ("the same USDC minted and balances; every minted unit in a coin, treasury or collateral",
                       lambda f, ref: f["usdc_accounted"] and f["minted"] == ref["minted"]
                       and f["balances"] == ref["balances"]),
    "histories": ("the same served histories (requests, units, answers, refusals recorded), nothing in flight",
                  lambda f, ref: f["histories"] == ref["histories"]),
    "journal": ("the same journal keys; none pending", lambda f, ref: f["journal_keys"] == ref["journal_keys"]
                and not f["journal_pending"]),
    "reconcile": ("ledger reconciled against the chain: no drift", lambda f, ref: f["reconcile_ok"]),
}


# ----------------------------------------------------------------------------------------------- processes
def _isolated(fn: Callable[[], None], case_dir: Path) -> Callable[[], None]:
    """``fn`` with Prefect's result storage inside the case (a cached replay must not leak between cases)."""

    def run() -> None:
        from prefect.settings import PREFECT_RESULTS_LOCAL_STORAGE_PATH, temporary_settings

        with temporary_settings(updates={PREFECT_RESULTS_LOCAL_STORAGE_PATH: str(case_dir / "prefect-results")}):
            fn()

    return run


NO_FAILPOINTS = {FAILPOINTS_ENV: None, FAILPOINT_TRACE_ENV: None}


@dataclass
class Reference:
    scenario: str
    points: list[tuple[str, int]]  # (failpoint name, its n-th pass)
    facts: dict
    seconds: float


def census(scenario: Scenario, template: Path, work: Path) -> Reference:
    """The clean run, traced: its crash points and the facts every crashed run must end with."""
    home = work / f"{scenario.name}-census"
    shutil.copytree(template, home)
    trace = work / f"{scenario.name}-trace.txt"
    log = work / f"{scenario.name}-census.log"
    started = time.monotonic()
    rc = run_forked(_isolated(lambda: scenario.drive(home), home), log, {**NO_FAILPOINTS, FAILPOINT_TRACE_ENV: str(trace)})
    took = time.monotonic() - started
    if rc != 0:
        raise RuntimeError(f"the clean {scenario.name} run failed (rc {rc}); see {log}:\n{log.read_text()[-3000:]}")
    seen: Counter = Counter()
    points = []
    for name in trace.read_text().split():
        seen[name] += 1
        points.append((name, seen[name]))
    ref = _facts_in_child(home, work / f"{scenario.name}-census-facts.json", log)
    return Reference(scenario.name, points, ref, took)


def _facts_in_child(home: Path, out: Path, log: Path) -> dict:
    def write() -> None:
        out.write_text(json.dumps(facts(home), default=str))

    rc = run_forked(write, log, NO_FAILPOINTS)
    if rc != 0:
        raise RuntimeError(f"reading the facts of {home} failed (rc {rc}); see {log}")
    return json.loads(out.read_text())


@dataclass
class Case:
    scenario: str
    point: str
    nth: int
    crash_recovery: bool
    crashes: int = 0
    runs: list[int] = field(default_factory=list)
    checks: dict[str, bool] = field(default_factory=dict)
    error: str = ""
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.error and bool(self.checks) and all(self.checks.values())

    def to_json(self) -> dict:
        return {**self.__dict__, "ok": self.ok}


def run_case(scenario: Scenario, template: Path, case: Case, case_dir: Path, reference: dict) -> Case:
    """Crash at the case's point, maybe crash the recovery too, run clean, compare the facts."""
    started = time.monotonic()
    home = case_dir / "home"
    shutil.copytree(template, home)
    log = case_dir / "runs.log"
    drive = _isolated(lambda: scenario.drive(home), case_dir)
    try:
        rc = run_forked(drive, log, {**NO_FAILPOINTS, FAILPOINTS_ENV: f"{case.point}@{case.nth}"})
        case.runs.append(rc)
        if rc != -signal.SIGKILL:
            raise RuntimeError(f"the armed run did not die at its failpoint (rc {rc})")
        case.crashes += 1
        wait_out_leases(home)  # what the killed run had reserved is stale once its leases run out
        free_signer_slots(os.environ["PREFECT_API_URL"])
        if case.crash_recovery:  # the recovery dies at the same place, if it passes there at all
            rc = run_forked(drive, log, {**NO_FAILPOINTS, FAILPOINTS_ENV: case.point})
            case.runs.append(rc)
            if rc == -signal.SIGKILL:
                case.crashes += 1
                wait_out_leases(home)
                free_signer_slots(os.environ["PREFECT_API_URL"])
            elif rc != 0:
                raise RuntimeError(f"the recovery run failed (rc {rc})")
        rc = run_forked(drive, log, NO_FAILPOINTS)
        case.runs.append(rc)
        if rc != 0:
            raise RuntimeError(f"the run after the crash failed (rc {rc})")
        got = _facts_in_child(home, case_dir / "facts.json", log)
        case.checks = {name: bool(judge(got, reference)) for name, (_, judge) in CHECKS.items()}
        if not case.ok:
            diff = {k: (got.get(k), reference.get(k)) for k in reference if got.get(k) != reference.get(k)}
            case.error = f"differs from the clean run: {json.dumps(diff, default=str)[:2000]}"
    except Exception as exc:  # noqa: BLE001 - one case's failure is reported, the campaign goes on
        tail = log.read_text()[-2500:] if log.exists() else ""
        case.error = f"{exc}\n{tail}"
    case.seconds = round(time.monotonic() - started, 2)
    return case


def run_cases(jobs: int, work: Path, plan: list[tuple[Scenario, Path, Case, dict]], progress: Callable[[Case], None]) -> list[Case]:
    """Each case in a forked runner, ``jobs`` at a time; a runner writes its case as JSON."""
    assert threading.active_count() == 1, f"threads before fork: {threading.enumerate()}"
    pending = list(enumerate(plan))
    running: dict[int, tuple[int, Path]] = {}
    done: dict[int, Case] = {}
    while pending or running:
        while pending and len(running) < jobs:
            i, (scenario, template, case, reference) = pending.pop(0)
            case_dir = work / "cases" / f"{i:04d}"
            case_dir.mkdir(parents=True)
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    result = run_case(scenario, template, case, case_dir, reference)
                    (case_dir / "case.json").write_text(json.dumps(result.to_json()))
                    if result.ok:  # a failed case keeps its home and logs for --keep
                        shutil.rmtree(case_dir / "home", ignore_errors=True)
                        shutil.rmtree(case_dir / "prefect-results", ignore_errors=True)
                    code = 0
                finally:
                    os._exit(code)
            running[pid] = (i, case_dir)
        pid, status = os.wait()
        i, case_dir = running.pop(pid)
        case = plan[i][2]
        result_file = case_dir / "case.json"
        if result_file.exists():
            data = json.loads(result_file.read_text())
            data.pop("ok")
            case = Case(**data)
        else:
            case.error = f"the case runner died (status {status})"
        done[i] = case
        progress(case)
    return [done[i] for i in range(len(plan))]


# ----------------------------------------------------------------------------------------------- Prefect API
class PrefectServer:
    """``prefect server start`` on 127.0.0.1 with a temporary home, for the campaign's runs."""

    def __init__(self, home: Path):
        self.home = home
        self.proc: subprocess.Popen | None = None
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/api"

    def start(self, timeout_s: float = 120.0) -> str:
        env = {**os.environ, "PREFECT_HOME": str(self.home), "PREFECT_UI_ENABLED": "false",
               "PREFECT_SERVER_LOGGING_LEVEL": "WARNING", "PREFECT_API_URL": ""}
        self.proc = subprocess.Popen(
            # --no-services: ad-hoc runs need no scheduler or other loops (they cost CPU)
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(self.port),
             "--no-services"],
            env=env, stdout=subprocess.DEVNULL, stderr=open(self.home / "server.log", "w"), start_new_session=True,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as r:
                    if r.status == 200:
                        return self.url
            except OSError:
                time.sleep(0.5)
            if self.proc.poll() is not None:
                break
        raise RuntimeError(f"prefect server did not start: {(self.home / 'server.log').read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)


# ----------------------------------------------------------------------------------------------- campaign
def plan_cases(ref: Reference, sample: int | None, recovery_every: int, only: str | None = None) -> list[Case]:
    """The cases of one scenario: its crash points (those whose name contains ``only``, if given), at most ``sample``
    of them spread evenly; every ``recovery_every``-th case (the 2nd, 4th, ... for 2; every one for 1) crashes its
    recovery too."""
    points = [p for p in ref.points if only is None or only in p[0]]
    if sample is not None and sample < len(points):  # evenly spread over the run
        step = len(points) / sample
        points = [points[int(i * step)] for i in range(sample)]
    return [Case(ref.scenario, name, nth, crash_recovery=recovery_every > 0 and i % recovery_every == recovery_every - 1)
            for i, (name, nth) in enumerate(points)]


def load_engine() -> None:
    """The CPU engine, loaded once here so forked runs share it (single-threaded: safe to fork)."""
    import torch
    import tqdm

    tqdm.tqdm.monitor_interval = 0  # no monitor thread (the GGUF loader's progress bars)
    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)
    from blocks import InferenceEngine
    from tasks.runtime import shared_engine

    shared_engine(InferenceEngine())
    # transformers' loader shuts its thread pool down without waiting: let those threads end before any fork
    for thread in threading.enumerate():
        if thread is not threading.main_thread():
            thread.join(timeout=30)


def point_group(name: str) -> str:
    """``journal:after-write:claim_funds`` -> ``journal:after-write``; ``step:claim-funds:start`` -> ``step:start``."""
    parts = name.split(":")
    if parts[0] == "step":
        return f"step:{parts[-1]}"
    return ":".join(parts[:2])


def markdown(results: dict) -> str:
    lines = [
        "## 1. Crash injection",
        "",
        "Every run below was killed with SIGKILL at one crash point (a failpoint, `ATOMA_OPS_FAILPOINTS=<point>@<n>`),",
        "on every other case killed again while recovering at the same point, then run to the end without",
        "failpoints. Its end state was compared with a clean run's (`reliability/crash.py`). Crash points come from",
        "tracing the clean run: every Prefect task's and stage flow's start and end (`step:*`), every chain write",
        "signed but not journaled (`journal:before-write`), journaled but not submitted (`journal:after-write`), part",
        "of a batch submitted (`journal:between-submits`), executed but its outcome not recorded",
        "(`journal:after-submit`), a faucet mint not yet journaled (`faucet:after-mint`), and a served request with",
        "its units reserved, its answer computed, or its answer recorded but not returned (`serve:*`).",
        "",
        f"**{results['crashes']} crashes injected** in {results['cases']} cases: "
        f"{results['passed']} converged, {results['cases'] - results['passed']} did not. "
        f"{results['jobs']} cases at a time; {results['seconds']:.0f} s in all.",
        "",
        "| scenario | clean run | crash points | cases | crashes | converged |",
        "|---|---|---|---|---|---|",
    ]
    for s in results["scenarios"]:
        lines.append(f"| {s['what']} | {s['clean_run_s']:.1f} s | {s['points']} | {s['cases']} | {s['crashes']} | "
                     f"{s['passed']}/{s['cases']} |")
    lines += ["", "Crashes by kind of point:", "", "| point | cases | crashes | converged |", "|---|---|---|---|"]
    for group, g in sorted(results["by_point"].items()):
        lines.append(f"| `{group}` | {g['cases']} | {g['crashes']} | {g['passed']}/{g['cases']} |")
    lines += ["", "What every case had to show after its re-run (against the clean run of its scenario):", "",
              "| check | what | cases passing |", "|---|---|---|"]
    for name, (what, _) in CHECKS.items():
        lines.append(f"| `{name}` | {what} | {results['checks'][name]}/{results['cases']} |")
    failed = [c for c in results["case_rows"] if not c["ok"]]
    if failed:
        lines += ["", "Cases that did not converge:", "", "| scenario | point | error |", "|---|---|---|"]
        for c in failed[:50]:
            lines.append(f"| {c['scenario']} | `{c['point']}@{c['nth']}` | {c['error'].splitlines()[0][:200]} |")
    return "\n".join(lines) + "\n"


def summarise(cases: list[Case], refs: dict[str, Reference], jobs: int, seconds: float) -> dict:
    by_point: dict[str, dict] = {}
    for c in cases:
        g = by_point.setdefault(point_group(c.point), {"cases": 0, "crashes": 0, "passed": 0})
        g["cases"] += 1
        g["crashes"] += c.crashes
        g["passed"] += c.ok
    scenarios = []
    for name, ref in refs.items():
        mine = [c for c in cases if c.scenario == name]
        scenarios.append({"name": name, "what": SCENARIOS[name].what, "clean_run_s": ref.seconds,
                          "points": len(ref.points), "cases": len(mine), "crashes": sum(c.crashes for c in mine),
                          "passed": sum(c.ok for c in mine)})
    return {
        "ok": bool(cases) and all(c.ok for c in cases),
        "cases": len(cases),
        "passed": sum(c.ok for c in cases),
        "crashes": sum(c.crashes for c in cases),
        "jobs": jobs,
        "seconds": round(seconds, 1),
        "scenarios": scenarios,
        "by_point": by_point,
        "checks": {name: sum(bool(c.checks.get(name)) for c in cases) for name in CHECKS},
        "case_rows": [c.to_json() for c in cases],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", action="append", choices=sorted(SCENARIOS), help="default: all of them")
    parser.add_argument("--jobs", type=int, default=2, help="cases run at a time")
    parser.add_argument("--sample", type=int, help="at most this many crash points per scenario, spread evenly")
    parser.add_argument("--recovery-every", type=int, default=2, help="crash the recovery too in every n-th case")
    parser.add_argument("--api-url", help="a running Prefect API (default: start a server on 127.0.0.1)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where crash.json and crash.md go")
    parser.add_argument("--keep", action="store_true", help="keep the cases' homes and logs")
    parser.add_argument("--only", help="only crash points whose name contains this (chosen before --sample)")
    parser.add_argument("--no-signer-lease", dest="signer_lease", action="store_false",
                        help="skip the signer-lease check that follows the campaign (about 1.5 minutes of waiting "
                        "out a real lease; a short campaign's slice has no use for it)")
    opts = parser.parse_args(argv)
    names = opts.scenario or list(SCENARIOS)
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="atoma-ops-crash-"))
    server = None
    try:
        if opts.api_url:
            os.environ["PREFECT_API_URL"] = opts.api_url
        else:
            (work / "prefect").mkdir()
            server = PrefectServer(work / "prefect")
            os.environ["PREFECT_API_URL"] = server.start()
        os.environ.setdefault("PREFECT_HOME", str(work / "prefect"))
        import flows  # noqa: F401 - imported once here, shared by every forked run

        if any(SCENARIOS[n].needs_engine for n in names):
            load_engine()

        refs: dict[str, Reference] = {}
        plan = []
        for name in names:
            scenario = SCENARIOS[name]
            template = work / f"{name}-template"
            template.mkdir()
            rc = run_forked(lambda: scenario.prepare(template), work / f"{name}-prepare.log", NO_FAILPOINTS)
            if rc != 0:
                raise RuntimeError(f"preparing {name} failed: {(work / f'{name}-prepare.log').read_text()[-3000:]}")
            refs[name] = ref = census(scenario, template, work)
            cases = plan_cases(ref, opts.sample, opts.recovery_every, opts.only)
            print(f"{name}: clean run {ref.seconds:.1f} s, {len(ref.points)} crash points, {len(cases)} cases", flush=True)
            plan += [(scenario, template, c, ref.facts) for c in cases]

        count = [0]

        def progress(case: Case) -> None:
            count[0] += 1
            mark = "ok " if case.ok else "FAIL"
            print(f"[{count[0]:>3}/{len(plan)}] {mark} {case.scenario:<22} {case.point}@{case.nth}"
                  f"  crashes={case.crashes} {case.seconds:.1f}s", flush=True)
            if not case.ok:
                print("      " + case.error[:1500].replace("\n", "\n      "), flush=True)

        cases = run_cases(opts.jobs, work, plan, progress)
        results = summarise(cases, refs, opts.jobs, time.monotonic() - started)
    finally:
        if server:
            server.stop()
        if not opts.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"kept {work}")
    opts.out.mkdir(parents=True, exist_ok=True)
    (opts.out / "crash.json").write_text(json.dumps(results, indent=1, default=str))
    (opts.out / "crash.md").write_text(markdown(results))
    print(f"{results['crashes']} crashes in {results['cases']} cases: {results['passed']} converged "
          f"({results['seconds']:.0f} s)")
    # a crashed holder of an address's signing slot must free it once its lease runs out: in a process of its own
    # (this one's Prefect settings point at the campaign's server, which runs no services), its own report part
    lease_ok = not opts.signer_lease or subprocess.run(
        [sys.executable, "-m", "reliability.signer_lease", "--out", str(opts.out)], cwd=ROOT).returncode == 0
    return 0 if results["ok"] and lease_ok else 1


if __name__ == "__main__":
    sys.exit(main())
