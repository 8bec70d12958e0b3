"""Part 4 of the reliability harness: security.

1. Refusals, on both paths of the Chain port (the embedded localnet; pysui → loopback Sui node → localnet): forged
   signatures, a wrong sender, another node's badge and a non-admin calling the admin-only entry functions. Each
   must fail with its named error and leave the chain, the nodes' histories and the ledger unchanged
   (:mod:`reliability.digests`). A genuine signature over the same bytes is then accepted, so the refusals were
   for the reason named. (tests/chain/test_concurrency.py, tests/testing/sui/test_execute.py and tests/chain/test_execute_verified.py
   cover further refusals: another chain id, stale object versions, the localnet's own JSON transactions.)
2. Keystore modes: every ``sui.keystore`` that ``LocalnetHome.init``, ``Wallet.create``/``new_key``, the CLI's
   ``localnet init`` and ``make demo`` write is 0600, even under a umask of 0.
3. Who may spend a stack on the node's HTTP surface (:mod:`reliability.http_security`): forged, another address's,
   over another body, wrong scheme flag, unsigned, oversized, another owner's stack; each refused with the Atoma
   node's status, nothing charged, no key in the log records.
4. Key scan (:mod:`reliability.keyscan`): positive controls first (a throwaway wallet's key planted in a file, a
   SQLite and a DuckDB table, a Prefect log and an artifact must all be found), then the real demo exactly as
   ``make demo`` runs it (``scripts/demo.py``, its output captured to ``data/reliability/security-demo.log``), then
   every file, database table, Prefect log line and artifact under ``data/`` and the captured log: zero hits.

Writes ``data/reliability/security.json`` and ``security.md``; exits 0 iff everything passed.

    .venv/bin/python -m reliability.security [--skip-demo] [--results DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import logging
import os
import re
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from atoma_ops.protocol.events import small_id

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "data" / "reliability"
PATHS = ("localnet", "sui")

# --------------------------------------------------------------------------------------------------- the scene
PRICE = 1_000_000
UNITS = 1_000
SAMPLING = 2


@dataclass
class Scene:
    """A localnet home with one Sampling Consensus stack served, try-settled (an attester requested) and indexed.

    ``node``/``other`` are the aliases of the stack's node and of the other registered node; ``task2`` is a task no
    node has subscribed to yet (so a subscription *would* succeed were the badge accepted).
    """

    home: Path
    task: int
    task2: int
    stack: int
    unsettled_stack: int
    node: str
    other: str
    badges: dict[str, dict[str, str]] = field(default_factory=dict)  # alias -> kind -> object id
    coins: dict[str, str] = field(default_factory=dict)  # alias -> one USDC coin id


def recorded(stack: int, i: int) -> tuple[dict, dict]:
    """A chat request and a recorded response (10 + 5 tokens), as a node stores what it served."""
    request = {"messages": [{"role": "user", "content": f"stack {stack} request {i}"}], "max_tokens": 8}
    response = {"object": "chat.completion", "model": "recorded",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": f"answer {i}"},
                             "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}}
    return request, response


async def build_scene(home: Path, seed: int = 7) -> Scene:
    """Make the scene in a fresh localnet home (manual epochs)."""
    from atoma_ops.home import LocalnetHome
    from atoma_ops.ledger import Ledger
    from atoma_ops.protocol.commitments import commit
    from atoma_ops.serving.store import NodeStore, Settlement, StackFacts

    localnet, _ = LocalnetHome(home).init(seed=seed, force=True)
    localnet.close()
    chain = LocalnetHome(home).open()
    try:
        await chain.faucet_mint(chain.wallet.resolve("user"), 10 * PRICE)
        tx = await chain.create_task_entry("admin", role=0, model_name="recorded", security_level=SAMPLING)
        task = small_id(tx.event("TaskRegisteredEvent").parsed_json["task_small_id"])
        tx = await chain.create_task_entry("admin", role=0, model_name="recorded-2", security_level=0)
        task2 = small_id(tx.event("TaskRegisteredEvent").parsed_json["task_small_id"])
        await chain.admin_set("admin", "set_cross_validation_probability_permille", 1000)
        ids = {}
        for alias in ("node-1", "node-2"):
            tx = await chain.register_node_entry(alias)
            ids[small_id(tx.event("NodeRegisteredEvent").parsed_json["node_small_id"])] = alias
            await chain.subscribe_node_to_task(alias, task_small_id=task, price_per_one_million_compute_units=PRICE)
        stacks = []
        for _ in range(2):
            tx = await chain.acquire_new_stack_entry("user", task_small_id=task, num_compute_units=UNITS, price=PRICE)
            stacks.append(small_id(tx.event("StackCreatedEvent").parsed_json["stack_small_id"]))
        facts = StackFacts.of(await chain.get_stack(stacks[0]))
        node = ids[facts.selected_node_id]
        other = next(a for a in ids.values() if a != node)
        # Serve the first stack (recorded outputs, the node's real store), then settle it honestly.
        with NodeStore(NodeStore.path_for(home, node)) as store:
            store.bind_node(facts.selected_node_id, chain.wallet.resolve(node))
            pairs = [recorded(facts.stack_small_id, i) for i in range(3)]
            reservations = store.reserve([(facts, 20) for _ in pairs])
            store.settle([Settlement(r, req, resp) for r, (req, resp) in zip(reservations, pairs)])
            history = store.history(facts.stack_small_id)
        c = commit(history.leaves, (await chain.db_config()).cross_validation_extra_nodes_count)
        await chain.try_settle_stack(node, stack_small_id=stacks[0], num_claimed_compute_units=history.units,
                                     committed_stack_proof=c.committed_stack_proof,
                                     stack_merkle_leaf=c.stack_merkle_leaf)
        ledger = Ledger(home / "ledger.duckdb")
        await ledger.sync(chain)
        ledger.import_node_usage(home)
        scene = Scene(home, task, task2, stacks[0], stacks[1], node, other)
        for alias in ("admin", "user", "node-1", "node-2"):
            address = chain.wallet.resolve(alias)
            scene.badges[alias] = {b.kind: b.object_id for b in await chain.badges(address)}
            coins = await chain.usdc_coins(address)
            if coins:
                scene.coins[alias] = coins[0].object_id
        return scene
    finally:
        await chain.close()


# --------------------------------------------------------------------------------------------------- refusals
@dataclass(frozen=True)
class Case:
    """One refusal.

    ``mode``: ``port`` calls the entry function as a flow does (the Sui adapter dry-runs first); ``signed`` builds
    the bytes without a dry run, signs them (by ``signer``, default the sender) and submits them, as an attacker
    would; ``forge`` then rewrites the signature. ``expected``: the error class and a pattern of its message.
    """

    group: str
    name: str
    sender: str
    function: str
    args: Callable[[Scene], dict]
    expected: tuple[str, str]
    mode: str = "signed"
    signer: str | None = None
    forge: str | None = None


def _flip(signature: str, index: int) -> str:
    raw = bytearray(base64.b64decode(signature))
    raw[index] ^= 0x01
    return base64.b64encode(bytes(raw)).decode()


def _reflag(signature: str, flag: int) -> str:
    raw = bytearray(base64.b64decode(signature))
    raw[0] = flag
    return base64.b64encode(bytes(raw)).decode()


REJECTED = "TransactionRejected"
NOT_OWNED = (REJECTED, r"owned by|not by the sender|not owned")


def _buy(s: Scene) -> dict:
    return {"task_small_id": s.task, "num_compute_units": UNITS, "price": PRICE}


def _badge(alias_of: Callable[[Scene], str], kind: str, param: str = "node_badge") -> Callable[[Scene], Callable]:
    def args(extra: Callable[[Scene], dict]) -> Callable[[Scene], dict]:
        return lambda s: {param: s.badges[alias_of(s)][kind], **extra(s)}

    return args


_node_badge = _badge(lambda s: s.node, "NodeBadge")
_admin_badge = _badge(lambda s: "admin", "AtomaManagerBadge", "badge")
_task_badge = _badge(lambda s: "admin", "TaskBadge", "task_badge")
_P, _L = bytes(range(32)), bytes(range(32, 64))


def cases() -> list[Case]:
    """The refusal table. The attacker is ``other`` (a registered node) or ``user`` (the buyer, not the admin)."""
    from atoma_ops.protocol import abi

    forged = [
        ("signed by another key (node-1 signs the buyer's stack purchase)", dict(signer="node-1"),
         (REJECTED, r"signed by")),
        ("a flipped byte at the start of the signature", dict(forge="flip:1"), (REJECTED, r"invalid signature")),
        ("a flipped byte at the end of the signature", dict(forge="flip:64"), (REJECTED, r"invalid signature")),
        ("a flipped byte in the embedded public key", dict(forge="flip:70"),
         (REJECTED, r"invalid signature|signed by")),
        ("the buyer's signature over other transaction bytes", dict(forge="other-bytes"),
         (REJECTED, r"invalid signature")),
        ("an empty signature", dict(forge="empty"), (REJECTED, r"invalid signature|empty|signature")),
        ("an unsupported signature scheme flag (multisig, 3)", dict(forge="flag:3"),
         (REJECTED, r"invalid signature|unsupported|scheme")),
    ]
    rows = [Case("forged signature", name, "user", "acquire_new_stack_entry", _buy, expected, **kw)
            for name, kw, expected in forged]

    other = lambda s: s.other  # noqa: E731
    rows += [
        Case("wrong sender", "the buyer's purchase naming the buyer, signed by the admin", "user",
             "acquire_new_stack_entry", _buy, (REJECTED, r"signed by"), signer="admin"),
        Case("wrong sender", "node-1's registration signed by node-2", "node-1",
             "register_node_entry", lambda s: {}, (REJECTED, r"signed by"), signer="node-2"),
        Case("wrong sender", "node spends the buyer's USDC coin (dry run / port)", "node-3",
             "acquire_new_stack_entry", lambda s: {"wallet": s.coins["user"], **_buy(s)}, NOT_OWNED, mode="port"),
        Case("wrong sender", "node spends the buyer's USDC coin (signed, no dry run)", "node-3",
             "acquire_new_stack_entry", lambda s: {"wallet": s.coins["user"], **_buy(s)}, NOT_OWNED),
    ]
    # Node `other` signs with the stack node's NodeBadge: every function that takes a NodeBadge.
    stolen = [
        ("try_settle_stack", lambda s: {"stack_small_id": s.unsettled_stack, "num_claimed_compute_units": 1,
                                        "committed_stack_proof": _P, "stack_merkle_leaf": _L}),
        ("submit_stack_settlement_attestation", lambda s: {"stack_small_id": s.stack, "committed_stack_proof": _P,
                                                           "stack_merkle_leaf": _L}),
        ("start_attestation_dispute", lambda s: {"stack_small_id": s.stack, "attestation_commitment": _P}),
        ("claim_funds", lambda s: {"settled_ticket_ids": [s.stack]}),
        ("claim_funds_for_stacks", lambda s: {"stack_small_ids": [s.stack], "num_compute_units_per_stack_to_claim": [1]}),
        ("subscribe_node_to_task", lambda s: {"task_small_id": s.task2, "price_per_one_million_compute_units": PRICE}),
        ("update_node_subscription", lambda s: {"task_small_id": s.task, "price_per_one_million_compute_units": 1}),
        ("unsubscribe_node_from_task", lambda s: {"task_small_id": s.task}),
        ("withdraw_fees", lambda s: {}),
        ("permanently_disable_node", lambda s: {}),
        ("destroy_disabled_node", lambda s: {}),
    ]
    rows += [Case("another node's badge", f"the other node calls {fn} with the stack node's NodeBadge",
                  "other", fn, _node_badge(extra), NOT_OWNED) for fn, extra in stolen]
    rows += [
        Case("another node's badge", "the same try-settle through the port (Sui: refused by the dry run)", "other",
             "try_settle_stack", _node_badge(stolen[0][1]), NOT_OWNED, mode="port"),
        Case("another node's badge", "a node with no NodeBadge try-settles (refused before signing)", "node-3",
             "try_settle_stack", stolen[0][1], ("InvalidArgument", r"owns no NodeBadge"), mode="port"),
    ]
    # The buyer (not the admin) calls every admin-only entry function.
    admin_fns: list[tuple[str, Callable[[Scene], dict]]] = [
        ("create_task_entry", lambda s: {"role": 0, "model_name": "x/y", "security_level": 0,
                                         "minimum_reputation_score": None, "is_public": True}),
        ("whitelist_nodes_for_task", lambda s: {"task_small_id": s.task2, "nodes": [1]}),
        ("remove_deprecated_task_by_admin", lambda s: {"task_small_id": s.task2}),
    ]
    admin_fns += [(name, (lambda s: {"value": 10}) if name not in ("disable_registration", "enable_registration")
                   else (lambda s: {})) for name in abi.ADMIN_SETTERS]
    rows += [
        Case("non-admin", "the buyer creates a task holding no AtomaManagerBadge (refused before signing)", "user",
             "create_task_entry", admin_fns[0][1], ("InvalidArgument", r"owns no AtomaManagerBadge"), mode="port"),
        Case("non-admin", "the buyer creates a task with the admin's badge (dry run / port)", "user",
             "create_task_entry", _admin_badge(admin_fns[0][1]), NOT_OWNED, mode="port"),
        Case("non-admin", "a node passes its NodeBadge as the AtomaManagerBadge", "other", "create_task_entry",
             lambda s: {"badge": s.badges[s.other]["NodeBadge"], **admin_fns[0][1](s)},
             (REJECTED, r"type mismatch|type|expected")),
    ]
    rows += [Case("non-admin", f"the buyer calls {fn} with the admin's AtomaManagerBadge", "user", fn,
                  _admin_badge(extra), NOT_OWNED) for fn, extra in admin_fns]
    rows += [Case("non-admin", f"the buyer calls {fn} with the admin's TaskBadge", "user", fn,
                  _task_badge(lambda s: {}), NOT_OWNED) for fn in ("deprecate_task", "remove_deprecated_task")]
    return rows


def _sender(case: Case, scene: Scene) -> str:
    return scene.other if case.sender == "other" else case.sender


async def _build(chain, sender: str, function: str, args: dict):
    """Bytes to sign, without the Sui adapter's dry run (the localnet adapter never dry-runs)."""
    if hasattr(chain, "build_transaction"):
        return await chain.build_transaction(sender, function, args)
    return await chain.prepare(sender, function, args)


async def attempt(chain, case: Case, scene: Scene) -> None:
    """Run one case; returns only if the chain accepted it."""
    sender = _sender(case, scene)
    args = case.args(scene)
    if case.mode == "port":
        await chain.call(sender, case.function, **args)
        return
    prepared = await _build(chain, sender, case.function, args)
    signature = chain.wallet.sign(case.signer or sender, prepared.tx_bytes)
    if case.forge == "empty":
        signature = ""
    elif case.forge == "other-bytes":
        other = await _build(chain, sender, case.function, {**args, "num_compute_units": UNITS + 1})
        signature = chain.wallet.sign(sender, other.tx_bytes)
    elif case.forge and case.forge.startswith("flip:"):
        signature = _flip(signature, int(case.forge.split(":")[1]))
    elif case.forge and case.forge.startswith("flag:"):
        signature = _reflag(signature, int(case.forge.split(":")[1]))
    await chain.execute(prepared, signature)


@contextlib.asynccontextmanager
async def open_path(home: Path, path: str):
    """The Chain port over ``home`` on ``path``: the localnet adapter, or pysui → a loopback Sui node."""
    from atoma_ops.home import LocalnetHome

    local = LocalnetHome(home).open()
    if path == "localnet":
        try:
            yield local
        finally:
            await local.close()
        return
    from atoma_ops.chain.sui.adapter import SuiChain
    from atoma_ops.testing.sui import LoopbackSuiNode
    from atoma_ops.chain.sui.networks import SuiNetwork

    ln = local.localnet
    node = LoopbackSuiNode(home / "chain.sqlite")
    await node.start()
    try:
        network = SuiNetwork(name="loopback", endpoint=node.url, package_id=ln.package_id, db_id=ln.db_id,
                             usdc_coin_type=ln.usdc_type)
        chain = await SuiChain.connect(network, local.wallet)
        try:
            yield chain
        finally:
            await chain.close()
    finally:
        await node.stop()
        await local.close()


async def run_refusals(scene: Scene, path: str, rows: list[Case] | None = None) -> list[dict]:
    """Every case on ``path``, each with the digests before and after; then the control (the genuine signature of
    the forged rows' transaction is accepted)."""
    from .digests import state_digests

    results = []
    async with open_path(scene.home, path) as chain:
        for case in rows if rows is not None else cases():
            before = state_digests(scene.home)
            error: BaseException | None = None
            try:
                await attempt(chain, case, scene)
            except Exception as exc:  # noqa: BLE001 - the row records whatever was raised
                error = exc
            changed = before.changed(state_digests(scene.home))
            kind, pattern = case.expected
            reason = re.search(pattern, str(error)) if error is not None else None
            named = error is not None and type(error).__name__ == kind and reason is not None
            results.append({
                "path": path, "group": case.group, "case": case.name, "sender": _sender(case, scene),
                "function": case.function, "mode": case.mode, "expected": kind,
                "error": None if error is None else type(error).__name__,
                "message": None if error is None else _short(str(error)),
                "reason": reason.group(0) if reason else None, "named": named, "changed": changed, "ok": named and not changed,
            })
        before = state_digests(scene.home)
        control = Case("control", "the genuine signature of the forged rows' purchase is accepted", "user",
                       "acquire_new_stack_entry", _buy, ("", ""))
        try:
            await attempt(chain, control, scene)
            accepted, message = True, None
        except Exception as exc:  # noqa: BLE001
            accepted, message = False, f"{type(exc).__name__}: {_short(str(exc))}"
        changed = before.changed(state_digests(scene.home))
        results.append({"path": path, "group": "control", "case": control.name, "sender": "user",
                        "function": control.function, "mode": "signed", "expected": "accepted",
                        "error": None if accepted else message, "message": message, "named": accepted,
                        "changed": changed, "ok": accepted and "chain" in changed})
    return results


def _short(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --------------------------------------------------------------------------------------------------- keystores
def _mode(path: Path) -> str:
    return oct(stat.S_IMODE(path.stat().st_mode))


def keystore_modes(work: Path, demo_home: Path | None) -> list[dict]:
    """The mode of every keystore each creator writes, under a umask of 0 (so only the code can make it 0600)."""
    from atoma_ops.home import LocalnetHome
    from atoma_ops.wallet import Wallet

    rows = []
    old = os.umask(0)
    try:
        localnet, _ = LocalnetHome(work / "init").init(seed=1)
        localnet.close()
        rows.append(("LocalnetHome.init", work / "init" / "sui.keystore"))
        wallet = Wallet.create(work / "wallet", ["a", "b"], env_alias="x")
        rows.append(("Wallet.create", wallet.keystore_path))
        wallet.new_key("c")
        rows.append(("Wallet.new_key (keystore rewritten)", wallet.keystore_path))
        cli = Path(sys.executable).with_name("atoma-ops")
        subprocess.run([str(cli), "--home", str(work / "cli"), "localnet", "init", "--seed", "3"], check=True,
                       capture_output=True, timeout=120)
        rows.append(("CLI: atoma-ops localnet init", work / "cli" / "sui.keystore"))
    finally:
        os.umask(old)
    if demo_home is not None:
        rows.append(("make demo (scripts/demo.py)", demo_home / "sui.keystore"))
    out = []
    for creator, path in rows:
        mode = _mode(path) if path.exists() else "missing"
        out.append({"creator": creator, "keystore": path.name, "mode": mode, "ok": mode == "0o600"})
    return out


# --------------------------------------------------------------------------------------------------- key scan
def plant_controls(work: Path) -> tuple[Path, dict[str, str]]:
    """A throwaway wallet, and its key planted in each kind of place a scan must search (files, SQLite, DuckDB);
    returns the wallet's keystore and the places planted (label -> kind)."""
    import sqlite3

    import duckdb

    from atoma_ops.wallet import Wallet

    wallet = Wallet.create(work / "throwaway", ["planted"], env_alias="x")
    entry = json.loads(wallet.keystore_path.read_text())[0]
    secret = base64.b64decode(entry)[1:]
    places = work / "places"
    places.mkdir()
    (places / "app.log").write_text(f"loaded key {entry}\n")
    (places / "blob.bin").write_bytes(os.urandom(100) + secret + os.urandom(100))
    (places / "export.json").write_text(json.dumps({"blob": base64.b64encode(b"xy" + secret + b"z").decode()}))
    con = sqlite3.connect(places / "store.sqlite")
    con.execute("CREATE TABLE t (k TEXT)")
    con.execute("INSERT INTO t VALUES (?)", (secret.hex(),))
    con.commit()
    con.close()
    con = duckdb.connect(str(places / "ledger.duckdb"))
    # Many equal values: DuckDB stores the column compressed, so only querying the rows can find it.
    con.execute("CREATE TABLE t AS SELECT ? AS k FROM range(5000)", [entry])
    con.close()
    return wallet.keystore_path, {"app.log": "file", "blob.bin": "file", "export.json": "file",
                                  "store.sqlite": "sqlite", "ledger.duckdb": "duckdb"}


def run_planted_flow(keystore: Path) -> str:
    """Run a real flow, under the current Prefect API, that logs and publishes the throwaway key; returns the flow
    run id."""
    import logging

    from prefect import flow, get_run_logger
    from prefect.artifacts import create_markdown_artifact
    from prefect.context import get_run_context

    entry = json.loads(keystore.read_text())[0]

    @flow(name="keyscan-planted")
    def planted() -> str:
        runs = logging.getLogger("prefect.flow_runs")
        runs.propagate = False  # to the API only, never to the console
        try:
            get_run_logger().warning("key %s", entry)
        finally:
            runs.propagate = True
        create_markdown_artifact(markdown=f"`{entry}`", key="planted-key")
        return str(get_run_context().flow_run.id)

    return planted()


def plant_prefect(keystore: Path) -> tuple[str, str]:
    """:func:`run_planted_flow` under a temporary Prefect API; returns the path of that API's database (SQLite) and
    the flow run id."""
    from prefect.settings import PREFECT_SERVER_DATABASE_CONNECTION_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        run_id = run_planted_flow(keystore)
        url = PREFECT_SERVER_DATABASE_CONNECTION_URL.value()
    return url.split(":///", 1)[1], run_id


def scan(roots: list[Path], *, base: Path, keystores: list[Path] = ()) -> "Any":
    from .keyscan import KeyScanner

    scanner = KeyScanner.for_roots(roots, keystores)
    for root in roots:
        scanner.scan_tree(root, base=base)
    return scanner


def run_controls(work: Path) -> list[dict]:
    """The scanner finds a planted key in each kind of place."""
    keystore, places = plant_controls(work)
    db, _ = plant_prefect(keystore)
    scanner = scan([work / "places", Path(db)], base=work, keystores=[keystore])
    report = scanner.report()
    rows = []
    for label, kind in places.items():
        hits = [h for h in report.hits if label in h.place and h.kind == kind]
        rows.append({"place": f"{kind}: {label}", "found": sorted({h.encoding for h in hits}), "ok": bool(hits)})
    for table, kind in (("log", "Prefect log"), ("artifact", "Prefect artifact")):
        hits = [h for h in report.hits if h.place.endswith(f"table {table}")]
        rows.append({"place": f"{kind} (its database, table {table})", "found": sorted({h.encoding for h in hits}),
                     "ok": bool(hits)})
    return rows


def run_demo(log: Path, env: dict[str, str]) -> dict:
    """``make demo``'s command, its stdout and stderr captured to ``log``."""
    started = time.monotonic()
    with log.open("wb") as out:
        rc = subprocess.run([sys.executable, "scripts/demo.py"], cwd=ROOT, env=env, stdout=out,
                            stderr=subprocess.STDOUT, timeout=1800).returncode
    return {"command": ".venv/bin/python scripts/demo.py", "rc": rc, "seconds": round(time.monotonic() - started, 1),
            "log": log.relative_to(ROOT).as_posix()}


# --------------------------------------------------------------------------------------------------- report
def markdown(data: dict) -> str:
    out = ["## 4. Security", ""]
    out.append(
        "Each refusal runs on both paths of the Chain port: `localnet` (the embedded localnet adapter) and `sui` "
        "(pysui over gRPC to the loopback Sui node serving the same localnet). *signed*: bytes built without a dry "
        "run, signed and submitted (the chain itself refuses); *port*: the call as a flow makes it (on Sui the dry "
        "run refuses first). A row passes when the named error is raised and the chain, history and ledger "
        "digests (`reliability/digests.py`) are unchanged. The last row per path is the control: the genuine "
        "signature of the forged rows' transaction is accepted."
    )
    out += ["", "| group | case | sender | entry function | mode | expected | localnet | sui |",
            "|---|---|---|---|---|---|---|---|"]
    by_case: dict[tuple[str, str], dict[str, dict]] = {}
    for r in data["refusals"]:
        by_case.setdefault((r["group"], r["case"]), {})[r["path"]] = r

    def cell(r: dict | None) -> str:
        if r is None:
            return "not run"
        if r["group"] == "control":
            return ("accepted; chain changed" if r["ok"] else f"**FAIL** {r['error']}")
        verdict = f"{r['error']} ({r['reason']})" if r["named"] else f"**FAIL** got {r['error']}: {r['message']}"
        verdict += "; digests unchanged" if not r["changed"] else f"; **changed {', '.join(r['changed'])}**"
        return verdict

    for (group, case), paths in by_case.items():
        any_row = next(iter(paths.values()))
        out.append(f"| {group} | {case} | {any_row['sender']} | `{any_row['function']}` | {any_row['mode']} | "
                   f"{any_row['expected']} | {cell(paths.get('localnet'))} | {cell(paths.get('sui'))} |")
    refusals = [r for r in data["refusals"] if r["group"] != "control"]
    out += ["", f"{sum(r['ok'] for r in refusals)} of {len(refusals)} refusals passed "
                f"({len(refusals) // max(1, len(PATHS))} cases × {len(PATHS)} paths)."]

    if "http" in data:
        from .http_security import markdown as http_markdown

        out += http_markdown(data["http"])
    out += ["", "**Keystore modes** (created under umask 0):", "", "| created by | mode | verdict |", "|---|---|---|"]
    for r in data["keystores"]:
        out.append(f"| {r['creator']} | {r['mode']} | {'pass' if r['ok'] else '**FAIL**'} |")

    out += ["", "**Key scan, positive controls** (a throwaway wallet's key planted; the scanner must find it):", "",
            "| place | encodings found | verdict |", "|---|---|---|"]
    for r in data["controls"]:
        out.append(f"| {r['place']} | {', '.join(r['found']) or 'none'} | {'pass' if r['ok'] else '**FAIL**'} |")

    s = data.get("scan")
    out += [""]
    if s is None:
        out.append("**Key scan after `make demo`**: not run (`--skip-demo`).")
    else:
        d = data["demo"]
        searched = s["searched"]
        out += [f"**Key scan after `make demo`** (`{d['command']}`, exit {d['rc']}, {d['seconds']} s, output in "
                f"`{d['log']}`): the {s['keys']} keys of {s['keystores']} keystores under `data/`, each in "
                f"{s['forms'] // max(1, s['keys'])} forms (keystore entry, base64url, bech32, raw bytes, hex, "
                "base64/base64url at every alignment, integer lists, secret+public), searched in:", "",
                "| place | searched |", "|---|---|"]
        for label, key in (("files under data/ (keystores excluded)", "files"), ("bytes of those files", "file_bytes"),
                           ("SQLite tables (rows queried)", "sqlite_tables"), ("SQLite rows", "sqlite_rows"),
                           ("DuckDB tables (rows queried)", "duckdb_tables"), ("DuckDB rows", "duckdb_rows"),
                           ("Prefect log lines (data/prefect)", "prefect_log_lines"),
                           ("Prefect artifacts (data/prefect)", "prefect_artifacts"),
                           ("lines of the demo's captured output", "captured_lines")):
            out.append(f"| {label} | {searched.get(key, 0):,} |")
        out += ["", f"Hits: **{len(s['hits'])}**" + (" (must be 0)." if not s["hits"] else ":")]
        for h in s["hits"]:
            out.append(f"- {h['place']}: key of {h['address']} as {h['encoding']}")
        if s.get("unreadable"):
            out += ["", "Unreadable databases: " + ", ".join(s["unreadable"])]
    out += ["", f"Verdict: **{'pass' if data['ok'] else 'FAIL'}**."]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--skip-demo", action="store_true", help="no demo and no scan of data/ (quick check)")
    opts = parser.parse_args(argv)
    os.chdir(ROOT)
    demo_env = dict(os.environ)  # the demo gets this shell's environment, not the temporary Prefect home below
    work = Path(tempfile.mkdtemp(prefix="atoma-ops-security-"))
    os.environ["PREFECT_HOME"] = str(work / "prefect")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    opts.results.mkdir(parents=True, exist_ok=True)

    logging.getLogger("pgrpc_client").setLevel(logging.CRITICAL)  # pysui logs every refused request's traceback
    data: dict[str, Any] = {"part": "security"}
    started = time.monotonic()
    scene = asyncio.run(build_scene(work / "scene"))
    data["refusals"] = [r for path in PATHS for r in asyncio.run(run_refusals(scene, path))]
    print(f"refusals: {sum(r['ok'] for r in data['refusals'])}/{len(data['refusals'])} passed")
    from . import http_security

    data["http"] = http_security.run(scene, units=UNITS, price=PRICE)
    print(f"HTTP: {sum(r['ok'] for r in data['http']['rows'])}/{len(data['http']['rows'])} refused as the Atoma node, "
          f"control {'served' if data['http']['control'].get('ok') else 'FAILED'}, "
          f"{len(data['http']['key_hits'])} key hits in {data['http']['log_records']} log records")
    (work / "controls").mkdir()
    data["controls"] = run_controls(work / "controls")
    print(f"positive controls: {sum(r['ok'] for r in data['controls'])}/{len(data['controls'])} found")

    demo_home = None
    if not opts.skip_demo:
        log = opts.results / "security-demo.log"
        print("running the demo as `make demo` does (about 3 minutes) …")
        data["demo"] = run_demo(log, demo_env)
        demo_home = ROOT / "data" / "demo-localnet"
        scanner = scan([ROOT / "data"], base=ROOT)
        text = log.read_text(errors="replace")
        scanner.scan_text(text, f"captured output {data['demo']['log']}")
        scanner.searched["captured_lines"] += text.count("\n")
        report = scanner.report()
        data["scan"] = {**report.to_json(), "keystores": len(scanner.skip), "unreadable": scanner.unreadable}
        print(f"key scan: {len(report.hits)} hits in {dict(report.searched)}")
    data["keystores"] = keystore_modes(work / "keystores", demo_home)
    data["seconds"] = round(time.monotonic() - started, 1)
    data["ok"] = bool(
        all(r["ok"] for r in data["refusals"]) and all(r["ok"] for r in data["controls"]) and data["http"]["ok"]
        and all(r["ok"] for r in data["keystores"])
        and (opts.skip_demo or (data["demo"]["rc"] == 0 and not data["scan"]["hits"] and not data["scan"]["unreadable"]))
    )
    (opts.results / "security.json").write_text(json.dumps(data, indent=2, default=str) + "\n")
    (opts.results / "security.md").write_text(markdown(data))
    print(f"wrote {opts.results / 'security.md'}: {'pass' if data['ok'] else 'FAIL'}")
    return 0 if data["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
